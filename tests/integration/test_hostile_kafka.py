"""Hostile input on the real stack: each probe that once stopped training or rewrote the
tables, sent to a real processor on Kafka and projected into a real PostgreSQL.

Every probe must become exactly one dead letter with a readable reason, the stream must go on
(a valid enrolment sent after all of them is honoured), and the tables must hold the accepted
facts only: the refused messages change no row but ``rejected_events``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from shaping.schemas.codec import HEADER_LEN, default_codec, encode_key
from shaping.schemas.events import AssignmentIssued, EventRejected, SessionEnded, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.projector import tables
from shaping.services.projector.runner import run_projector
from tests.support.hostile import encode_unchecked, with_occurred_at
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, of_mouse
from tests.support.story import enrolled, next_id, session, trials
from tests.support.wiring import sql_store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_hostile_messages_are_dead_letters_and_change_no_table(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_topics: TopicNames,
    kafka_bootstrap: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real window: dates far from the broker's time are refused.
    monkeypatch.setenv("SHAPING_CLOCK_MAX_BEHIND_DAYS", "366")
    now = datetime.now(UTC)
    good = "M-good"
    story = [enrolled(good), *session(good, "s-1", trials(correct=8, incorrect=2))]
    story = [e.model_copy(update={"occurred_at": now - timedelta(minutes=30)}) for e in story]
    processors.start(new_processor_id())
    publisher.events(story)
    outputs.wait_for(
        lambda _: of_mouse(outputs, good, StageTransitioned),
        what="the good session's decision",
        on_timeout=processors.log_tail,
    )
    [ended] = [e for e in story if isinstance(e, SessionEnded)]

    probes: list[tuple[str, bytes, bytes, str]] = []  # what, key, value, expected kind

    def probe(what: str, key: bytes, value: bytes, kind: str) -> None:
        probes.append((what, key, value, kind))

    late = enrolled("M-far").model_copy(update={"occurred_at": now})
    probe("after year 9999", b"M-far", with_occurred_at(late, 253402300800000), "undecodable")
    probe("before year 1", b"M-far", with_occurred_at(late, -62135596800001), "undecodable")
    future = [
        e.model_copy(update={"occurred_at": datetime(9999, 12, 31, tzinfo=UTC)})
        for e in session(good, "s-9999", trials(correct=3))
    ]
    probe("session dated 9999-12-31", encode_key(good), publisher.codec.encode(future[0]), "clock")
    old = enrolled("M-old").model_copy(update={"occurred_at": datetime(1970, 1, 1, tzinfo=UTC)})
    probe("enrolment dated 1970", b"M-old", publisher.codec.encode(old), "clock")
    probe("900 kB of garbage", b"M-junk", b"\xc3\x01" + os.urandom(900_000), "undecodable")
    huge_stage = encode_unchecked(enrolled("M-stage"), start_stage="s" * 600_000)
    probe("600 kB stage name", b"M-stage", huge_stage, "invalid")
    nul = encode_unchecked(enrolled("M-nul"), mouse_id="M-nul\x00")
    probe("NUL in the key and mouse_id", b"M-nul\x00", nul, "invalid")
    nul_rig = encode_unchecked(story[1], rig_id="rig\x00-1", event_id=next_id())
    probe("NUL in rig_id", encode_key(good), nul_rig, "invalid")
    second_end = ended.model_copy(
        update={"event_id": next_id(), "end_reason": "aborted", "n_trials": 0, "duration_s": 5.0}
    )
    probe(
        "a second SessionEnded", encode_key(good), publisher.codec.encode(second_end), "impossible"
    )
    resent = [e.model_copy(update={"event_id": next_id()}) for e in story[1:3]]
    probe(
        "a re-sent session start", encode_key(good), publisher.codec.encode(resent[0]), "impossible"
    )
    fingerprint = story[0]
    value = publisher.codec.encode(fingerprint)
    forged = value[:2] + b"\x01\x23\x45\x67\x89\xab\xcd\xef" + value[HEADER_LEN:]
    probe("unknown fingerprint", encode_key(good), forged, "undecodable")
    reused = story[0].model_copy(update={"curriculum_name": "reach-task"})
    probe("reused id, other content", encode_key(good), publisher.codec.encode(reused), "duplicate")
    probe(
        "key differs from mouse_id", b"M-other", publisher.codec.encode(enrolled("M-x")), "invalid"
    )

    for _, key, value, _ in probes:
        publisher.raw(key, value)
    after = "M-after"
    publisher.events([enrolled(after).model_copy(update={"occurred_at": now})])
    outputs.wait_for(
        lambda _: of_mouse(outputs, after, AssignmentIssued),
        what="the enrolment sent after every probe",
        on_timeout=processors.log_tail,
    )

    def dead_letters() -> list[EventRejected]:
        return [r.event for r in outputs.records if r.topic == kafka_topics.dead_letter]

    outputs.wait_for(
        lambda _: len(dead_letters()) >= len(probes),
        what="a dead letter for every probe",
        on_timeout=processors.log_tail,
    )
    letters = dead_letters()
    assert all(isinstance(e, EventRejected) for e in letters)
    by_digest = {e.original_sha256: e for e in letters}
    missing = [
        what for what, _, value, _ in probes if hashlib.sha256(value).hexdigest() not in by_digest
    ]
    assert not missing, (missing, processors.log_tail())
    assert len(by_digest) == len(letters) == len(probes), [
        (e.error_kind, e.reason[:80]) for e in letters
    ]
    for what, _, value, kind in probes:
        letter = by_digest[hashlib.sha256(value).hexdigest()]
        assert letter.error_kind == kind, (what, letter.reason)
        assert letter.original_size == len(value), what
        assert "b'" not in letter.reason and "\x00" not in letter.reason, (what, letter.reason)
        print(f"{what:28} -> {letter.error_kind:11} {letter.reason[:110]}")
    assert all(p.poll() is None for p in processors.processes), processors.log_tail()

    # The tables: accepted facts only.
    prefix = kafka_topics.events.removesuffix(".events")
    url = postgres_url
    store = sql_store(url)
    store.reset()
    try:
        stop = threading.Event()
        run_projector(
            kafka_bootstrap, TopicNames.with_prefix(prefix), store, default_codec(), idle_exit_s=3.0
        )
        with store.engine.connect() as conn:
            mice = sorted(conn.execute(select(tables.mouse_status.c.mouse_id)).scalars())
            sessions = conn.execute(select(tables.session_summaries)).mappings().all()
            rejected = conn.execute(select(tables.rejected_events)).mappings().all()
        assert mice == sorted([good, after])
        [summary] = sessions
        assert (summary["session_id"], summary["end_reason"]) == ("s-1", ended.end_reason)
        assert summary["duration_s"] == ended.duration_s and summary["n_trials"] == 10
        assert len(rejected) == len(probes)
        assert not stop.is_set()
    finally:
        store.close()
