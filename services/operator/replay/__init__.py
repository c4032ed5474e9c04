"""``shaping replay``: rebuild the processor's state and the status tables from the event log.

The live processor keeps per-mouse state in a changelog-backed faust table and the projector
keeps the status tables; both are folds over the log. Replay redoes both folds from offset 0,
with the code and curricula installed now, next to the live ones, and then switches over:

1. Snapshot. The processor's consumer group must be inactive (the processor stopped). Replay
   takes the end offsets of the events topic as its snapshot and reads the live output topics
   (accepted, decisions, assignments, dead letters) to their ends.
2. Fold. The events topic up to the snapshot is split by partition across worker processes
   (:mod:`.parallel`; a mouse's events share a partition): each streams its partitions in
   offset order (throwaway consumers, no group, nothing committed; confluent-kafka when it is
   installed) and folds every message through the same
   :class:`~shaping.services.processor.step.ProcessorStep` and
   :class:`~shaping.services.domain.TrainingCore` the processor runs (so the same curricula, dead
   letters and ids), keeping its mice's states in memory. An enrolment that names no curriculum
   version is pinned to the version the log says it was accepted on (:class:`EnrolmentPins`),
   never to a newer one known now. A CurriculumPublished on the events topic makes the whole
   log fold again in one process, partitions merged by broker timestamp. A rich progress bar
   shows events/s and the time left.
3. Project. What the fold republished on the accepted topic and its outputs are projected by
   the projector's own store, in memory per worker, and written in bulk into fresh tables: a
   fresh PostgreSQL schema, or a fresh SQLite file.
4. Reconcile. Each output is compared with the live one of the same id. Identical: the live
   event is kept. Different: a correction with a new id and ``supersedes`` naming the live
   version is published (decisions; for the compacted assignments topic only each mouse's
   latest assignment, which is what rigs read), so rigs get corrected assignments and every
   consumer keeps the audit trail. Absent: published as it is (an accepted input verbatim).
5. Diff. The fresh tables are compared with the live ones: per mouse, the stage now and after
   replay, and the decisions added, removed or changed (by session).
6. Switch over. In one transaction the live tables are locked, checked to be untouched since
   the snapshot (a running projector would have moved its offsets), and replaced: PostgreSQL
   moves the old tables to a backup schema and the fresh ones in; SQLite copies the fresh rows
   over the live ones (after a backup file made with ``VACUUM INTO``). The projector's offsets
   in the new tables are the snapshot, so a restarted projector goes on from there.
7. Hand over. The corrections are published; the rebuilt state of every mouse whose state
   differs from the changelog's is written to the processor's changelog topic
   (``<processor_id>-mouse_state-changelog``, the mouse's partition, a state record as the
   processor's store encodes it: :mod:`~shaping.services.processor.state_store`), and the processor
   group's offsets on the events topic are moved to the snapshot. A restarted processor
   recovers the rebuilt state and goes on with the events that arrived during the replay.

Every step compares before it writes, so replaying twice changes nothing, and a replay that
stopped half-way converges when run again. ``--dry-run`` stops after the diff and is read-only,
so it may run while the services run: the live tables are read on a read-only connection, the
fresh ones built in a temporary SQLite file, and nothing is published, written to a changelog
or committed to a consumer group.

Nothing in a log makes replay fail: records that hold no event, dead letters with arbitrary
bytes (shown as hex), events the processor refused are all taken as the processor takes them.

The embedded mode (``shaping demo``'s ``events.jsonl`` and SQLite file) runs the same fold,
projection, reconciliation, diff and switch-over; corrections are appended to the log file,
and there is no processor state to hand over (the embedded runtime folds the log when it
starts). See ``docs/replay.md``.

The modules, one unit each (the steps above each serves in brackets):

- :mod:`.log`: reading the log: Kafka partitions between bounds, the embedded log file (whose
  line format is :mod:`shaping.services.embedded.log`'s) [1];
- :mod:`.sources`: the two places a log is (:class:`KafkaSource`, :class:`JsonlSource`) and
  where corrections are published [1, 7];
- :mod:`.pins`: enrolments pinned to the version they were accepted on [2];
- :mod:`.fold`: the fold through the processor's step into fresh tables [2, 3];
- :mod:`.parallel`: the fold split by partition across worker processes [2, 3];
- :mod:`.reconcile`: outputs compared with the live ones, corrections [4];
- :mod:`.tables`: reading the live tables (read-only for a dry run) [5];
- :mod:`.diff`: what differs, per table and per mouse [5];
- :mod:`.swap`: fresh tables and the switch-over (raw DDL) [6];
- :mod:`.handover`: the processor's changelog and offsets [7];
- :mod:`.run`: the whole run, in this order.

Nothing here builds its own codec or catalog: the caller hands them in
(:mod:`shaping.services.cli.replay`).
"""

from __future__ import annotations

from shaping.services.operator.replay.diff import MouseChange, TableChange, diff_tables
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.fold import BUILD_CONSUMER, Rebuild
from shaping.services.operator.replay.handover import (
    INACTIVE_GROUP_STATES,
    ProcessorHandover,
    same_state,
)
from shaping.services.operator.replay.log import (
    SourceRecord,
    decode_or_none,
    iter_jsonl,
    kafka_offsets,
    live_events,
    read_jsonl,
    read_kafka,
    read_partition,
)
from shaping.services.operator.replay.parallel import FoldResult, fold_parallel, fold_partitions
from shaping.services.operator.replay.pins import LOOKAHEAD, EnrolmentPins, Lookahead, PinnedCore
from shaping.services.operator.replay.reconcile import (
    REPLAY_NAMESPACE,
    LiveOutputs,
    Reconciler,
    content_of,
    correction_id,
)
from shaping.services.operator.replay.run import ProgressFn, ReplaySummary, run_replay
from shaping.services.operator.replay.sources import (
    CatalogFactory,
    JsonlSource,
    KafkaSource,
    Source,
)
from shaping.services.operator.replay.swap import FreshTables
from shaping.services.operator.replay.tables import live_offsets, read_live, table_rows
from shaping.services.processor.state_store import changelog_topic

_same_state = same_state
"""The name tests/unit/test_state_store.py uses (same_state lives in :mod:`.handover`)."""

__all__ = [
    "BUILD_CONSUMER",
    "INACTIVE_GROUP_STATES",
    "LOOKAHEAD",
    "REPLAY_NAMESPACE",
    "CatalogFactory",
    "EnrolmentPins",
    "FoldResult",
    "FreshTables",
    "JsonlSource",
    "KafkaSource",
    "LiveOutputs",
    "Lookahead",
    "MouseChange",
    "PinnedCore",
    "ProcessorHandover",
    "ProgressFn",
    "Rebuild",
    "Reconciler",
    "ReplayError",
    "ReplaySummary",
    "Source",
    "SourceRecord",
    "TableChange",
    "changelog_topic",
    "content_of",
    "correction_id",
    "decode_or_none",
    "diff_tables",
    "fold_parallel",
    "fold_partitions",
    "iter_jsonl",
    "kafka_offsets",
    "live_events",
    "live_offsets",
    "read_jsonl",
    "read_kafka",
    "read_live",
    "read_partition",
    "run_replay",
    "same_state",
    "table_rows",
]
