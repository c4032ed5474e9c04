"""A small lab for the digest and welfare export tests: two mice on one day, one under water
restriction, with weights, water, a hold and a release, through the embedded runtime."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from shaping.schemas.commands import (
    AddNote,
    Command,
    GiveWater,
    OverrideStage,
    RecordWeight,
    StartRestriction,
)
from shaping.services.embedded.runtime import EmbeddedRuntime
from tests.support.story import enrolled, session, trials

DAY = date(2026, 2, 2)
AT = datetime(2026, 2, 2, tzinfo=UTC)
HOSTILE = "<script>alert('x')</script>\x1b[31m"


def ask(kind: type[Command], mouse: str, hour: float, by: str = "ada", **fields: object) -> Command:
    return kind(
        mouse_id=mouse,
        requested_by=by,
        requested_at=AT + timedelta(hours=hour),
        **fields,  # type: ignore[arg-type]
    )


def small_lab(runtime: EmbeddedRuntime) -> None:
    """M1 restricted (25 g reference), weighed 24.0 g, one session of 120 trials (90 correct),
    0.4 mL supplement; M2 unrestricted, 100 trials at 50 %; M3 restricted and weighed 19.0 g
    (held). All on 2026-02-02 (UTC)."""
    runtime.publish(
        [enrolled(m).model_copy(update={"occurred_at": AT}) for m in ("M1", "M2", "M3")]
    )
    runtime.send_commands(
        [
            ask(StartRestriction, "M1", 7, reference_grams=25.0),
            ask(RecordWeight, "M1", 8, grams=24.0),
            ask(StartRestriction, "M3", 7, reference_grams=25.0),
            ask(RecordWeight, "M3", 8.5, grams=19.0),
        ]
    )
    runtime.publish(session("M1", "s-1", trials(correct=90, incorrect=30)))
    runtime.publish(session("M2", "s-2", trials(correct=50, incorrect=50)))
    runtime.send_commands(
        [
            ask(GiveWater, "M1", 11, ml=0.4),
            ask(AddNote, "M2", 12, text=f"coat {HOSTILE}"),
            ask(OverrideStage, "M2", 13, by="bob", to_stage="s2_training", reason=HOSTILE),
        ]
    )


def mail_files(folder: Path, port: int) -> tuple[Path, Path]:
    """A routing file (the SMTP server on ``port``; ada and bob with addresses) and a people
    file (lab-a: every mouse; ada has the lab, bob only M2), written in ``folder``."""
    routing = folder / "routing.yaml"
    routing.write_text(
        f"smtp: {{host: 127.0.0.1, port: {port}, sender: shaping@lab.test}}\n"
        "people:\n  ada: {email: ada@lab.test}\n  bob: {email: bob@lab.test}\n"
        "subscriptions:\n  - {people: [ada]}\n"
    )
    people = folder / "people.yaml"
    people.write_text(
        "labs: {lab-a: {mice: ['M*']}}\ntrainers:\n  ada: {labs: [lab-a]}\n  bob: {mice: [M2]}\n"
    )
    return routing, people


def small_lab_url(folder: Path) -> str:
    """The small lab folded into a SQLite file in ``folder``; its SQLAlchemy URL."""
    from tests.support.wiring import embedded_runtime, sql_store

    url = f"sqlite:///{folder / 'lab.sqlite'}"
    store = sql_store(url)
    small_lab(embedded_runtime(store))
    store.close()
    return url
