"""``python -m bench.state_bytes``: bytes the processor writes to its changelogs per message.

Runs subject SWC_054's 11 IBL sessions (ibllib's test fixture, ``tests/data/anchors/ibl``)
through the processing step, as the faust processor does, and stores the state after every
message in two ways:

- before: the whole :class:`MouseState` in one table (``encode_state``);
- after: ``records_to_store`` (services/processor/state_store.py): the whole state to
  ``mouse_state`` when anything but the open sessions changed, else only the open sessions
  (zlib-compressed) to ``mouse_sessions``.

Prints, per session and in all, the bytes written per trial and per other message (the value
of each changelog record; Kafka adds a record header, the key and batch overhead to both), the
size the open-sessions record would have without zlib, and the time per trial of storing and
loading (median of the messages; the machine is shared, so compare within one run).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import Event, MouseEnrolled, TrialCompleted
from shaping.services.curricula.loader import load_curriculum
from shaping.services.domain import CurriculumCatalog, TrainingCore
from shaping.services.operator.ibl_trials import read_trials, session_events
from shaping.services.processor.state_store import (
    decode_state,
    encode_state,
    join_sessions,
    records_to_store,
    split_sessions,
)
from shaping.services.processor.step import ProcessorStep
from tests.support.anchors import IBL

REPO = Path(__file__).resolve().parent.parent
TRIALS = IBL / "trials_test_flat.csv"
LADDER = REPO / "curricula" / "ibl" / "training-status.yaml"
MOUSE = "SWC_054"


def _median_us(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e6:7.0f} us" if values else "      -"


def main() -> int:
    if not TRIALS.exists():
        print(f"needs {TRIALS} (the IBL conformance data, tests/data/anchors/ibl)", file=sys.stderr)
        return 1
    curriculum = load_curriculum(LADDER)
    core = TrainingCore(CurriculumCatalog([curriculum]))
    codec = default_codec()
    step = ProcessorStep(core, codec)
    key = encode_key(MOUSE)
    days = read_trials(TRIALS)

    whole: bytes | None = None  # before: one table
    record: bytes | None = None  # after: mouse_state ...
    sessions: bytes | None = None  # ... and mouse_sessions
    offset = 0

    def handle(event: Event) -> tuple[int, int, int, float, float, float, float]:
        """Processes one message both ways; returns (bytes before, bytes after, raw size of
        the open sessions, store/load seconds before, store/load seconds after)."""
        nonlocal whole, record, sessions, offset
        value = codec.encode(event)
        started = time.perf_counter()
        state = None if whole is None else decode_state(whole)
        load_before = time.perf_counter() - started
        result = step.process(state, key, value, "events", 0, offset)
        started = time.perf_counter()
        joined = None if record is None else join_sessions(record, sessions)
        load_after = time.perf_counter() - started
        assert joined == state, "the split store disagrees with the whole state"
        # The split path runs the step on its own loaded state, as the processor does (the new
        # state shares the unchanged parts with it, which the comparison relies on).
        split = step.process(joined, key, value, "events", 0, offset)
        assert split.state == result.state
        offset += 1
        if result.state is None or split.state is None:
            return 0, 0, 0, 0.0, load_before, 0.0, load_after
        started = time.perf_counter()
        whole = encode_state(result.state)
        store_before = time.perf_counter() - started
        started = time.perf_counter()
        new_record, new_sessions = records_to_store(record, joined, split.state)
        store_after = time.perf_counter() - started
        raw = 0
        if new_sessions is not None and record is not None:
            sessions, written = new_sessions, len(new_sessions)
            raw = len(split_sessions(split.state, record).model_dump_json())
        else:
            assert new_record is not None
            record, written = new_record, len(new_record)
        return len(whole), written, raw, store_before, load_before, store_after, load_after

    enrol = MouseEnrolled(
        event_id=f"{MOUSE}-enrolled",
        mouse_id=MOUSE,
        occurred_at=datetime.fromisoformat(days[0].session_date).replace(tzinfo=UTC),
        curriculum_name=curriculum.name,
        curriculum_version=curriculum.version,
    )
    handle(enrol)
    print(
        f"{MOUSE}, {len(days)} IBL sessions, bytes written to the changelogs "
        "(record values; before = whole state per message, after = split):"
    )
    print(
        f"{'session':>7} {'trials':>6} | {'before/trial':>12} {'after/trial':>11} "
        f"{'no zlib':>8} | {'before/other':>12} {'after/other':>11}"
    )
    totals = {"trials": 0, "before_t": 0, "after_t": 0, "raw_t": 0, "before_o": 0, "after_o": 0}
    others = 0
    timing: dict[str, list[float]] = {"sb": [], "lb": [], "sa": [], "la": []}
    for number, day in enumerate(days):
        joined = None if record is None else join_sessions(record, sessions)
        assert joined is not None and joined.stage is not None
        events = session_events(
            day,
            mouse_id=MOUSE,
            session_id=f"{MOUSE}-{number}",
            stage=joined.stage,
            curriculum_name=curriculum.name,
            curriculum_version=curriculum.version,
            start=datetime.fromisoformat(day.session_date).replace(tzinfo=UTC) + timedelta(hours=9),
        )
        per = {"trials": 0, "before_t": 0, "after_t": 0, "raw_t": 0, "before_o": 0, "after_o": 0}
        n_other = 0
        for event in events:
            before, after, raw, sb, lb, sa, la = handle(event)
            if isinstance(event, TrialCompleted):
                per["trials"] += 1
                per["before_t"] += before
                per["after_t"] += after
                per["raw_t"] += raw
                timing["sb"].append(sb)
                timing["lb"].append(lb)
                timing["sa"].append(sa)
                timing["la"].append(la)
            else:
                n_other += 1
                per["before_o"] += before
                per["after_o"] += after
        n = per["trials"]
        print(
            f"{number + 1:>7} {n:>6} | {per['before_t'] / n:>12,.0f} {per['after_t'] / n:>11,.0f} "
            f"{per['raw_t'] / n:>8,.0f} | {per['before_o'] / n_other:>12,.0f} "
            f"{per['after_o'] / n_other:>11,.0f}"
        )
        for name in totals:
            totals[name] += per[name]
        others += n_other
    n = totals["trials"]
    print(
        f"{'all':>7} {n:>6} | {totals['before_t'] / n:>12,.0f} {totals['after_t'] / n:>11,.0f} "
        f"{totals['raw_t'] / n:>8,.0f} | {totals['before_o'] / others:>12,.0f} "
        f"{totals['after_o'] / others:>11,.0f}"
    )
    everything_before = totals["before_t"] + totals["before_o"]
    everything_after = totals["after_t"] + totals["after_o"]
    print(
        f"in all: {everything_before / 1e6:.1f} MB before, {everything_after / 1e6:.2f} MB after "
        f"({everything_before / everything_after:.0f}x less) for {n} trials and {others} other "
        "messages"
    )
    print(
        "per trial, median: store "
        f"{_median_us(timing['sb'])} before, {_median_us(timing['sa'])} after; load "
        f"{_median_us(timing['lb'])} before, {_median_us(timing['la'])} after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
