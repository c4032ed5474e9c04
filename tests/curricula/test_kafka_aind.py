"""One AIND mouse end to end on the Kafka path: the real processor (a separate process, its
curricula from SHAPING_CURRICULA_DIR) judges the mouse's sessions, each run at the stage it
assigned, and decides as AIND did; a CurriculumPublished on the log adds a version to it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    MouseEnrolled,
    MouseMigrated,
    StageTransitioned,
)
from shaping.schemas.topics import TopicNames
from shaping.services.curricula.migrate import published_event
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.operator.curricula import publish
from tests.support.aind import (
    aind_decision,
    alias,
    open_loop_mice,
    sessions_as_events,
    v01,
    v01_document,
)
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processor import (  # noqa: F401 - fixtures
    ProcessorRunner,
    new_processor_id,
    of_mouse,
    outputs,
    processors,
    publisher,
)

pytestmark = pytest.mark.kafka


def test_an_aind_mouse_through_kafka_decides_as_aind_did(
    processors: ProcessorRunner,  # noqa: F811
    publisher: Publisher,  # noqa: F811
    outputs: TopicReader,  # noqa: F811
    kafka_topics: TopicNames,
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "curricula"
    folder.mkdir()
    (folder / "coupled-baiting-0.1.yaml").write_text(yaml.safe_dump(v01_document()))
    monkeypatch.setenv("SHAPING_CURRICULA_DIR", str(folder))
    processors.start(new_processor_id())

    [(mouse, rows)] = open_loop_mice(1).items()
    curriculum = v01()
    publisher.events(
        [
            MouseEnrolled(
                event_id=f"{mouse}-enrol",
                mouse_id=mouse,
                occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
                curriculum_name=curriculum.name,
                curriculum_version=curriculum.version,
            )
        ]
    )

    def assignment(n: int) -> AssignmentIssued:
        found = outputs.wait_for(
            lambda _: [
                a for a in of_mouse(outputs, mouse, AssignmentIssued) if a.session_number == n
            ],
            what=f"assignment for session {n}",
            on_timeout=processors.log_tail,
        )
        return found[0]  # type: ignore[no-any-return]

    sessions = [
        {
            "finished_trials": int(r["finished_trials"]),
            "foraging_efficiency": float(r["foraging_efficiency_3dp"])
            if r["foraging_efficiency_3dp"]
            else None,
        }
        for r in rows
    ]
    # The rig runs each session at the stage the processor assigned after the previous one.
    for events in sessions_as_events(mouse, sessions, lambda i: assignment(i + 1).stage):
        publisher.events(events)
    assignment(len(rows) + 1)
    decisions = sorted(of_mouse(outputs, mouse, StageTransitioned), key=lambda d: d.session_total)
    agree = sum(
        (
            alias(curriculum, d.from_stage),
            aind_decision(d.decision),
            alias(curriculum, d.to_stage),
        )
        == (r["current_stage_suggested"], r["decision"], r["next_stage_suggested"])
        for d, r in zip(decisions, rows, strict=True)
    )
    print(f"\nAIND mouse {mouse} through Kafka and the processor: {agree}/{len(rows)} agree")
    assert len(decisions) == len(rows) and agree == len(rows)

    # Publishing a version on the log adds it to the running processor (a migration to it is
    # then accepted); a publication whose content does not match its hash is refused.
    patched = compile_curriculum({**v01_document(), "version": "0.1.1", "description": "fix"})
    published = published_event(patched, curriculum, datetime(2024, 6, 1, tzinfo=UTC), "ada")
    assert published.bump == "patch"
    forged = published.model_copy(update={"event_id": "forged", "content": published.content + " "})
    last = assignment(len(rows) + 1)
    move = MouseMigrated(
        event_id=f"{mouse}-migrate",
        mouse_id=mouse,
        occurred_at=datetime(2024, 6, 2, tzinfo=UTC),
        curriculum_name=curriculum.name,
        from_version="0.1.0",
        to_version="0.1.1",
        from_stage=last.stage,
        to_stage=last.stage,
        content_hash=patched.content_hash,
    )
    publish(kafka_bootstrap, kafka_topics.events, [forged, published, move], default_codec())
    rejected = outputs.wait_for(
        lambda _: outputs.events(event_type=EventRejected), what="the forged publication"
    )
    assert {r.causation_id for r in rejected} == {"forged"}  # one copy per partition
    assert all("does not match its content_hash" in r.reason for r in rejected)
    migrated = outputs.wait_for(
        lambda _: [a for a in of_mouse(outputs, mouse, AssignmentIssued) if a.reason == "migrated"],
        what="the migrated assignment",
        on_timeout=processors.log_tail,
    )[0]
    assert (migrated.curriculum_version, migrated.stage) == ("0.1.1", last.stage)
