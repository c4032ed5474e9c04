"""Husbandry use cases: record a weight, water, a restriction or a note, and read a day's
welfare; behind ``shaping weigh``, ``water``, ``restrict``, ``note`` and ``welfare``, and the
trainers' web page.

Each record is one command (RecordWeight, GiveWater, StartRestriction, EndRestriction,
AddNote) sent through a :data:`Sender`: to Kafka (:func:`kafka_sender`: the commands topic, or
the operator's ingress topic on a secured cluster, then a wait for the answer) or to an
embedded runtime (:func:`embedded_sender`). The processor answers with the past-tense event
on the events topic (honoured) or an EventRejected (refused: a mouse it does not know, an
implausible weight, a jump from the last weight that was not confirmed, ...). What can be
checked before sending is checked here: the command's own fields, and the mouse against the
mice known (the closest ids suggested).

A day's welfare (:func:`welfare_from_tables`, :func:`welfare_from_states`) is the pure math of
:mod:`shaping.services.domain.welfare` over the husbandry the status tables (or the embedded
states) hold, with the lab's policy. What goes wrong is a :class:`HusbandryError` with a
message for a person; the command line prints it and chooses the exit status.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shaping.schemas.codec import EventCodec
    from shaping.schemas.commands import (
        AddNote,
        Command,
        EndRestriction,
        GiveWater,
        RecordWeight,
        ReleaseHold,
        StartRestriction,
    )
    from shaping.schemas.events import Event
    from shaping.services.adapters.settings import Settings
    from shaping.services.domain.state import Husbandry, MouseState
    from shaping.services.domain.welfare import WelfarePolicy, WelfareStatus
    from shaping.services.embedded.runtime import EmbeddedRuntime

DEFAULT_WAIT_S = 20.0

POLICY_ENV = "SHAPING_WELFARE_POLICY"
"""The environment variable naming the lab's welfare policy file (until a setting does)."""


class HusbandryError(OperatorError):
    """A husbandry record cannot be sent as asked, did not arrive, or was refused."""


class HusbandryRefused(HusbandryError):
    """The processor refused the record (its EventRejected's reason in the message)."""


# -- the policy -----------------------------------------------------------------------------------


def welfare_policy(path: str | Path | None) -> WelfarePolicy:
    """The lab's policy from its file; the default policy when ``path`` is None or empty.

    Raises:
        HusbandryError: the file cannot be read or is invalid (every problem with its line).
    """
    from shaping.services.curricula.policy import PolicyInvalid, load_policy
    from shaping.services.domain.welfare import DEFAULT_POLICY

    if path is None or not str(path).strip():
        return DEFAULT_POLICY
    try:
        return load_policy(Path(path))
    except PolicyInvalid as exc:
        raise HusbandryError(str(exc)) from exc


# -- building the commands ------------------------------------------------------------------------


def _problem_text(exc: ValueError) -> str:
    problems = getattr(exc, "errors", None)
    if callable(problems):
        return "; ".join(
            (
                ".".join(str(p) for p in e.get("loc", ()) if p != "__root__") + ": "
                if e.get("loc")
                else ""
            )
            + str(e.get("msg", "")).removeprefix("Value error, ")
            for e in problems()
        )
    return str(exc)


def _checked(build: Callable[[], Command], what: str) -> Command:
    """Builds a command and the event it asks for, so that bad input is refused here."""
    try:
        command = build()
        command.answer()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise HusbandryError(f"cannot record this {what}: {_problem_text(exc)}") from exc
    return command


def _by(by: str) -> str:
    if not by.strip():
        raise HusbandryError("say who records it (--by)")
    return by


def build_weight(
    mouse_id: str,
    grams: float,
    by: str,
    *,
    confirmed: bool = False,
    scale_id: str | None = None,
    requested_at: datetime | None = None,
) -> RecordWeight:
    """The RecordWeight command.

    Raises:
        HusbandryError: a weight that is not a positive number, a bad mouse or scale id.
    """
    from shaping.schemas.commands import RecordWeight

    return _checked(  # type: ignore[return-value]
        lambda: RecordWeight(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            grams=grams,
            scale_id=scale_id,
            confirmed=confirmed,
        ),
        "weight",
    )


def build_water(
    mouse_id: str,
    ml: float,
    by: str,
    *,
    kind: str = "supplement",
    water_type: str = "water",
    session_id: str | None = None,
    requested_at: datetime | None = None,
) -> GiveWater:
    """The GiveWater command.

    Raises:
        HusbandryError: a volume that is not positive (0 only for free access), an unknown
            kind or water type.
    """
    from shaping.schemas.commands import GiveWater

    return _checked(  # type: ignore[return-value]
        lambda: GiveWater(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            ml=ml,
            kind=kind,  # type: ignore[arg-type]
            water_type=water_type,  # type: ignore[arg-type]
            session_id=session_id,
        ),
        "water",
    )


def build_restriction_start(
    mouse_id: str,
    reference_grams: float,
    by: str,
    *,
    reference_method: str = "measured",
    implant_grams: float = 0.0,
    birth_date: str | None = None,
    sex: str | None = None,
    requested_at: datetime | None = None,
) -> StartRestriction:
    """The StartRestriction command.

    Raises:
        HusbandryError: a reference weight that is not positive, an implant as heavy as the
            mouse, a bad birth date, sex or method.
    """
    from shaping.schemas.commands import StartRestriction

    return _checked(  # type: ignore[return-value]
        lambda: StartRestriction(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            reference_grams=reference_grams,
            reference_method=reference_method,  # type: ignore[arg-type]
            implant_grams=implant_grams,
            birth_date=birth_date,
            sex=sex,  # type: ignore[arg-type]
        ),
        "restriction",
    )


def build_restriction_end(
    mouse_id: str, by: str, reason: str = "", requested_at: datetime | None = None
) -> EndRestriction:
    """The EndRestriction command."""
    from shaping.schemas.commands import EndRestriction

    return _checked(  # type: ignore[return-value]
        lambda: EndRestriction(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            reason=reason.strip(),
        ),
        "end of restriction",
    )


def build_release(
    mouse_id: str, by: str, reason: str, requested_at: datetime | None = None
) -> ReleaseHold:
    """The ReleaseHold command: a held (or not yet weighed) restricted mouse may train today.

    Raises:
        HusbandryError: no reason given.
    """
    from shaping.schemas.commands import ReleaseHold

    return _checked(  # type: ignore[return-value]
        lambda: ReleaseHold(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            reason=reason.strip(),
        ),
        "release",
    )


def build_note(mouse_id: str, text: str, by: str, requested_at: datetime | None = None) -> AddNote:
    """The AddNote command.

    Raises:
        HusbandryError: an empty or too long note.
    """
    from shaping.schemas.commands import AddNote

    return _checked(  # type: ignore[return-value]
        lambda: AddNote(
            mouse_id=mouse_id,
            requested_by=_by(by),
            requested_at=requested_at or datetime.now(UTC),
            text=text.strip(),
        ),
        "note",
    )


def check_known(mouse_id: str, known: Iterable[str] | None) -> None:
    """Refuses a mouse that is not among the ``known`` ids, naming the closest ones (None: the
    known mice could not be read here; the processor checks).

    Raises:
        HusbandryError: an unknown mouse.
    """
    if known is None:
        return
    ids = sorted(set(known))
    if mouse_id in ids:
        return
    close = difflib.get_close_matches(mouse_id, ids, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise HusbandryError(f"no mouse {mouse_id!r} is enrolled{hint}")


# -- sending --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What the processor answered a command with, and where it was read.

    Attributes:
        event: the event that honours it, an EventRejected, or None (no answer in time).
        where: ``topic[partition]@offset`` of the answer (or of the command, unanswered).
    """

    event: Event | None
    where: str


Sender = Callable[["Command"], Answer]
"""Sends one command and returns the processor's answer."""


def kafka_sender(settings: Settings, codec: EventCodec, wait_s: float = DEFAULT_WAIT_S) -> Sender:
    """Sends commands to Kafka (:func:`~shaping.services.operator.interventions.send_command`)
    and waits up to ``wait_s`` for each answer on the events or dead-letter topic."""
    from shaping.services.operator.interventions import (
        ANSWERED_BY_EVENT,
        DeliveryError,
        send_command,
    )

    def send(command: Command) -> Answer:
        try:
            outcome = send_command(settings, command, codec, wait_s, answered_on=ANSWERED_BY_EVENT)
        except DeliveryError as exc:
            raise HusbandryError(str(exc)) from exc
        if outcome.answer is None:
            return Answer(None, f"{outcome.topic}[{outcome.partition}]@{outcome.offset}")
        topic = settings.topics.events
        if outcome.answer.event_type == "EventRejected":
            topic = settings.topics.dead_letter
        return Answer(
            outcome.answer, f"{topic}[{outcome.answer_partition}]@{outcome.answer_offset}"
        )

    return send


def embedded_sender(runtime: EmbeddedRuntime) -> Sender:
    """Sends commands to an embedded runtime, which answers at once."""

    def send(command: Command) -> Answer:
        before = len(runtime.log)
        runtime.send_commands([command])
        for record in runtime.log.records()[before:]:
            try:
                event = runtime.codec.decode(record.value)
            except Exception:
                continue
            if event.event_id == command.answer_id or (
                event.event_type == "EventRejected" and event.causation_id == command.command_id
            ):
                return Answer(event, f"{record.topic}[{record.partition}]@{record.offset}")
        return Answer(None, runtime.topics.commands)

    return send


@dataclass(frozen=True)
class Recorded:
    """A husbandry command and the processor's answer.

    Attributes:
        command: the command as sent.
        event: the event that honours it (None: no answer in time).
        where: where the answer (or the command) is.
    """

    command: Command
    event: Event | None
    where: str

    def report(self) -> str:
        """One line for a person."""
        from shaping.services.operator.terminal import printable

        command = self.command
        if self.event is None:
            return (
                f"sent the {command.command_type} of {command.mouse_id} (command "
                f"{command.command_id}, {self.where}); no answer from the processor yet: "
                f"`shaping welfare {command.mouse_id}` shows it once it is recorded"
            )
        return printable(f"{describe(self.event)} (event {self.event.event_id}, {self.where})")


def describe(event: Event) -> str:
    """A husbandry fact in words."""
    data = event.model_dump()
    mouse = event.mouse_id
    kind = event.event_type
    if kind == "WeightRecorded":
        confirmed = " (confirmed)" if data["confirmed"] else ""
        return f"weight of {mouse} recorded: {data['grams']:g} g{confirmed}"
    if kind == "WaterGiven":
        return (
            f"water for {mouse} recorded: {data['ml']:g} mL {data['water_type']} "
            f"({data['kind'].replace('_', ' ')})"
        )
    if kind == "RestrictionStarted":
        implant = f", implant {data['implant_grams']:g} g" if data["implant_grams"] else ""
        return (
            f"{mouse} is on water restriction: reference {data['reference_grams']:g} g "
            f"({data['reference_method']}){implant}"
        )
    if kind == "RestrictionEnded":
        return f"water restriction of {mouse} ended"
    if kind == "HusbandryNote":
        return f"note on {mouse} recorded"
    if kind == "HoldReleased":
        return f"{mouse} released for today: {data['reason']}"
    return f"{kind} of {mouse}"


def submit(command: Command, send: Sender, known: Iterable[str] | None = None) -> Recorded:
    """Checks the mouse against the ``known`` ids, sends the command, reads the answer.

    Raises:
        HusbandryError: an unknown mouse (closest ids named), or a command that did not
            reach the log; HusbandryRefused: the processor refused it (its reason).
    """
    from shaping.services.operator.terminal import printable

    check_known(command.mouse_id, known)
    answer = send(command)
    event = answer.event
    if event is not None and event.event_type == "EventRejected":
        reason = getattr(event, "reason", "")
        raise HusbandryRefused(
            f"the processor refused the {command.command_type} of {command.mouse_id}: "
            f"{printable(reason)}"
        )
    return Recorded(command, event, answer.where)


def known_from_tables(db_url: str) -> list[str] | None:
    """The mice the status tables know; None when they cannot be read here."""
    from shaping.services.operator.queries import mouse_ids, open_database

    try:
        engine = open_database(db_url)
    except OperatorError:
        return None
    try:
        return list(mouse_ids(engine))
    finally:
        engine.dispose()


def known_from_states(states: Mapping[str, MouseState]) -> list[str]:
    """The mice an embedded runtime has enrolled."""
    return [mouse for mouse, state in states.items() if state.enrolled]


def latest_weight(db_url: str, mouse_id: str) -> float | None:
    """The newest weight of a mouse in the status tables (None: none, or unreadable)."""
    from sqlalchemy import select

    from shaping.services.operator.queries import open_database
    from shaping.services.projector.tables import husbandry_weights

    try:
        engine = open_database(db_url)
    except OperatorError:
        return None
    try:
        query = (
            select(husbandry_weights.c.grams)
            .where(husbandry_weights.c.mouse_id == mouse_id)
            .order_by(husbandry_weights.c.weighed_at.desc())
            .limit(1)
        )
        with engine.connect() as conn:
            return conn.execute(query).scalar()
    except Exception:
        return None
    finally:
        engine.dispose()


# -- a day's welfare ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MouseWelfare:
    """One mouse's welfare on a day, and its gate (issue 15): the reason it is held (None:
    not held) and the lab day its newest assignment is cleared to train on (None: not
    cleared, or not on restriction)."""

    mouse_id: str
    status: WelfareStatus
    held: str | None = None
    cleared_on: str | None = None

    def gate(self) -> str:
        """The gate in words: ``HELD: why``, ``cleared``, ``not cleared`` or ``-``."""
        if self.held is not None:
            return f"HELD: {self.held}"
        if not self.status.restricted:
            return "-"
        if self.cleared_on == self.status.day.isoformat():
            return "cleared"
        return "not cleared"


def lab_day(policy: WelfarePolicy, now: datetime | None = None) -> date:
    """The lab's day now (the policy's time zone)."""
    return policy.day_of(now or datetime.now(UTC))


def welfare_from_states(
    states: Mapping[str, MouseState],
    policy: WelfarePolicy,
    day: date,
    now: datetime | None = None,
    mouse_id: str | None = None,
) -> list[MouseWelfare]:
    """Every enrolled mouse's welfare (or one mouse's) from an embedded runtime's states."""
    from shaping.services.domain.welfare import welfare_status

    known = known_from_states(states)
    if mouse_id is not None:
        check_known(mouse_id, known)
    chosen = sorted(known) if mouse_id is None else [mouse_id]
    found = []
    for m in chosen:
        state = states[m]
        hold = state.husbandry.hold
        last = state.last_assignment
        cleared = last.welfare.cleared_on if last is not None and last.welfare else None
        found.append(
            MouseWelfare(
                m,
                welfare_status(state.husbandry, policy, day, now),
                None if hold is None else hold.reason,
                cleared,
            )
        )
    return found


def husbandry_from_rows(
    weights: Sequence[Any], water: Sequence[Any], restriction: Any | None
) -> Husbandry:
    """A mouse's husbandry as the state holds it, from its rows of the status tables
    (weights and water oldest first; the open restriction, if any)."""
    from shaping.services.domain.state import (
        WEIGHTS_KEPT,
        Husbandry,
        Restriction,
        WaterEntry,
        WeightEntry,
    )

    return Husbandry(
        weights=tuple(
            WeightEntry(at=r["weighed_at"], grams=r["grams"]) for r in weights[-WEIGHTS_KEPT:]
        ),
        water=tuple(
            WaterEntry(at=r["given_at"], ml=r["ml"], kind=r["kind"], water_type=r["water_type"])
            for r in water
        ),
        restriction=None
        if restriction is None
        else Restriction(
            started_at=restriction["started_at"],
            reference_grams=restriction["reference_grams"],
            reference_method=restriction["reference_method"],
            implant_grams=restriction["implant_grams"],
            birth_date=restriction["birth_date"],
            sex=restriction["sex"],
        ),
    )


def husbandry_of(
    conn: Any,
    mouse_id: str,
    water_from: datetime,
    water_until: datetime,
    *,
    as_of: datetime | None = None,
) -> Husbandry:
    """A mouse's husbandry from the status tables: its weights, the water given in
    [``water_from``, ``water_until``), and its restriction; as it stood at ``as_of`` (weights
    before it, the restriction in force then), or as it stands now (None: every weight, the
    restriction not ended)."""
    from sqlalchemy import select

    from shaping.services.projector.tables import (
        husbandry_restrictions,
        husbandry_water,
        husbandry_weights,
    )

    weighed = select(husbandry_weights).where(husbandry_weights.c.mouse_id == mouse_id)
    restricted = select(husbandry_restrictions).where(husbandry_restrictions.c.mouse_id == mouse_id)
    if as_of is None:
        restricted = restricted.where(husbandry_restrictions.c.ended_at.is_(None))
    else:
        weighed = weighed.where(husbandry_weights.c.weighed_at < as_of)
        restricted = restricted.where(husbandry_restrictions.c.started_at < as_of).where(
            husbandry_restrictions.c.ended_at.is_(None)
            | (husbandry_restrictions.c.ended_at >= as_of)
        )
    weights = list(
        conn.execute(
            weighed.order_by(husbandry_weights.c.weighed_at, husbandry_weights.c.event_id)
        ).mappings()
    )
    water = list(
        conn.execute(
            select(husbandry_water)
            .where(husbandry_water.c.mouse_id == mouse_id)
            .where(husbandry_water.c.given_at >= water_from)
            .where(husbandry_water.c.given_at < water_until)
            .order_by(husbandry_water.c.given_at, husbandry_water.c.event_id)
        ).mappings()
    )
    restriction = (
        conn.execute(restricted.order_by(husbandry_restrictions.c.started_at.desc()).limit(1))
        .mappings()
        .first()
    )
    return husbandry_from_rows(weights, water, restriction)


def welfare_from_tables(
    engine: Engine,
    policy: WelfarePolicy,
    day: date,
    now: datetime | None = None,
    mouse_id: str | None = None,
) -> list[MouseWelfare]:
    """Every known mouse's welfare (or one mouse's) from the status tables.

    Raises:
        HusbandryError: ``mouse_id`` is not in the tables (closest ids named).
    """
    from sqlalchemy import select

    from shaping.services.domain.welfare import welfare_status
    from shaping.services.operator.queries import mouse_ids
    from shaping.services.projector.tables import (
        husbandry_weights,
        welfare_gate,
    )

    known = set(mouse_ids(engine))
    with engine.connect() as conn:
        known |= set(conn.execute(select(husbandry_weights.c.mouse_id).distinct()).scalars())
    if mouse_id is not None:
        check_known(mouse_id, known)
    chosen = sorted(known) if mouse_id is None else [mouse_id]
    # Water of the day in any time zone lies within a day either side of its UTC date.
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1)
    end = start + timedelta(days=3)
    result = []
    with engine.connect() as conn:
        for mouse in chosen:
            husbandry = husbandry_of(conn, mouse, start, end)
            gate = (
                conn.execute(select(welfare_gate).where(welfare_gate.c.mouse_id == mouse))
                .mappings()
                .first()
            )
            held = gate["hold_reason"] if gate is not None and gate["held"] else None
            cleared = gate["cleared_on"] if gate is not None else None
            result.append(
                MouseWelfare(mouse, welfare_status(husbandry, policy, day, now), held, cleared)
            )
    return result


def welfare_rows(found: Sequence[MouseWelfare]) -> list[dict[str, str]]:
    """Display rows of a welfare table (every value as text)."""

    def ml(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    rows = []
    for item in found:
        s = item.status
        water = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in sorted(s.water_ml.items()))
        rows.append(
            {
                "mouse": item.mouse_id,
                "weight g": "-" if s.latest_grams is None else f"{s.latest_grams:g}",
                "weighed": "-" if s.latest_at is None else s.latest_at.strftime("%Y-%m-%d %H:%M"),
                "expected g": "-" if s.expected_grams is None else f"{s.expected_grams:.1f}",
                "%": "-" if s.percent is None else f"{s.percent:.1f}",
                "status": s.status,
                "water mL": f"{s.given_ml:.2f}" + (f" ({water})" if water else ""),
                "required mL": ml(s.requirement_ml),
                "still due mL": ml(s.still_required_ml),
                "supplement mL": f"{s.supplement_ml:.2f}"
                + (" ALERT animal services" if s.alert_animal_services else ""),
                "advice": s.advice(),
                "gate": item.gate(),
            }
        )
    return rows


# -- an embedded install --------------------------------------------------------------------------

EMBEDDED_LOG = "events.jsonl"
EMBEDDED_DB = "shaping.sqlite"


class EmbeddedLab:
    """An embedded install in a folder (``shaping demo``'s output: the event log
    ``events.jsonl`` and the status tables ``shaping.sqlite``), opened to take commands: the
    mice's states are folded again from the log, each command is judged and answered in
    process, and :meth:`close` saves the log with the new records (the tables are written as
    the records come).

    Raises:
        HusbandryError: the folder holds no event log.
    """

    def __init__(
        self,
        folder: Path,
        *,
        catalog: Any,
        codec: EventCodec,
        policy: WelfarePolicy | None = None,
    ) -> None:
        from shaping.services.embedded.log import InProcessLog
        from shaping.services.embedded.runtime import EmbeddedRuntime
        from shaping.services.projector.store import SqlProjectionStore

        self.log_path = folder / EMBEDDED_LOG
        self.db_path = folder / EMBEDDED_DB
        if not self.log_path.is_file():
            raise HusbandryError(
                f"no embedded event log at {self.log_path} (run `shaping demo --out {folder}` "
                "to make an embedded install)"
            )
        log = InProcessLog.load_jsonl(self.log_path)
        self.store = SqlProjectionStore(f"sqlite:///{self.db_path}", codec=codec)
        self.runtime = EmbeddedRuntime.resume(
            log, self.store, catalog=catalog, codec=codec, welfare=policy
        )
        self._length = len(log)

    @property
    def db_url(self) -> str:
        """The status tables' URL."""
        return f"sqlite:///{self.db_path}"

    def sender(self) -> Sender:
        """Sends commands to this install."""
        return embedded_sender(self.runtime)

    def known(self) -> list[str]:
        """The mice enrolled here."""
        return known_from_states(self.runtime.states)

    def close(self) -> None:
        """Saves the log when it grew, and closes the tables."""
        try:
            if len(self.runtime.log) != self._length:
                # Written aside, then moved over the old log: a crash never leaves half a log.
                partial = self.log_path.with_name(self.log_path.name + ".new")
                self.runtime.log.save_jsonl(partial, self.runtime.codec)
                partial.replace(self.log_path)
        finally:
            self.store.close()

    def __enter__(self) -> EmbeddedLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
