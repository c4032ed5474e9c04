"""A trainer's interventions (override, eject, adjust), as commands: the use case behind
``shaping override``, ``eject`` and ``adjust``.

An intervention is one command on the commands topic, keyed by the mouse id, written by an
idempotent kafka-python producer with ``acks=all`` (as ``shaping enroll`` does): OverrideStage,
EjectMouse or AdjustParameters. The processor judges it against the mouse's state and either
honours it (it appends the past-tense event, StageOverridden, MouseEjected or
ParametersAdjusted, to the events topic with an id derived from the command's, folds it, and
issues an AssignmentIssued caused by that event) or refuses it (an EventRejected on the
dead-letter topic, caused by the command, with the reason). :func:`deliver` waits for that
answer, so the trainer learns it at once; :func:`send_command` is the publishing and waiting
that ``shaping enroll`` shares.

Before anything is published, what can be checked here is checked, with suggestions for
typos: the mouse against the status tables, the stage and the adjusted parameters against the
mouse's curriculum version. When the status tables cannot be read, the command goes out
unchecked and the processor alone judges it. An override names the stage the status tables
show as the mouse's ``from_stage``, so the processor refuses it if the mouse has moved since.

:func:`request_override`, :func:`request_ejection` and :func:`request_adjustment` do the whole
of it. What goes wrong is an :class:`InterventionError` with a message for the trainer: a
request that cannot work (bad input, an ejected mouse, a stage the curriculum lacks), a
:class:`DeliveryError` (the command did not reach Kafka), or an :class:`InterventionRefused`
(the processor said no). The commands (services/cli/interventions.py) print it and choose
the exit status. Nothing heavy is imported at module level (``shaping`` stays light on a
rig). docs/interventions.md describes the commands and their semantics.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shaping.services.operator.terminal import printable

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Engine

    from shaping.schemas.codec import EventCodec
    from shaping.schemas.commands import (
        AdjustParameters,
        Command,
        EjectMouse,
        OverrideStage,
    )
    from shaping.schemas.events import Event, Parameters, ParamValue
    from shaping.services.adapters.settings import Settings
    from shaping.services.domain import CurriculumCatalog, CurriculumEngine

SEND_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
DEFAULT_WAIT_S = 20.0

Warn = Callable[[str], None]
"""Where the warnings of an intervention go (a line of text each): the checks that could not
be made here, so the command goes out unchecked."""


class InterventionError(Exception):
    """An intervention cannot be sent as asked (bad input, or a known-impossible request)."""


class DeliveryError(InterventionError):
    """The command did not reach the commands topic: no broker answered, the topics are
    missing, or Kafka refused the write."""


class InterventionRefused(InterventionError):
    """The processor refused the intervention: it answered with an EventRejected.

    Attributes:
        event: the event the command asked for (its id derived from the command's).
        answer: the processor's EventRejected.
    """

    def __init__(self, message: str, event: Event, answer: Event) -> None:
        super().__init__(message)
        self.event = event
        self.answer = answer


def _warn_on_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


# -- what the status tables say about a mouse ----------------------------------------------------


@dataclass(frozen=True)
class MouseView:
    """A mouse as the status tables show it."""

    mouse_id: str
    curriculum_name: str | None
    curriculum_version: str | None
    stage: str | None
    last_reason: str | None

    @property
    def ejected(self) -> bool:
        """Whether its current assignment is the ejection."""
        return self.last_reason == "ejected"


def mouse_view(db_url: str, mouse_id: str) -> MouseView | None:
    """The mouse's row of the status tables; None when they cannot be read here.

    Raises:
        InterventionError: the tables are readable and have no such mouse (closest ids named).
    """
    from sqlalchemy import select

    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database, require_mouse
    from shaping.services.projector.tables import mouse_status

    try:
        engine = open_database(db_url)
    except OperatorError:
        return None
    try:
        try:
            require_mouse(engine, mouse_id)
        except OperatorError as exc:
            raise InterventionError(str(exc)) from exc
        columns = (
            mouse_status.c.curriculum_name,
            mouse_status.c.curriculum_version,
            mouse_status.c.stage,
            mouse_status.c.last_reason,
        )
        with engine.connect() as conn:
            row = conn.execute(select(*columns).where(mouse_status.c.mouse_id == mouse_id)).one()
        return MouseView(mouse_id, *row)
    finally:
        engine.dispose()


def _curriculum(
    view: MouseView | None, catalog: CurriculumCatalog | None
) -> CurriculumEngine | None:
    if view is None or catalog is None or view.curriculum_name is None:
        return None
    from shaping.services.domain import CurriculumError

    try:
        return catalog.get(view.curriculum_name, view.curriculum_version)
    except CurriculumError:
        return None  # a version published to the log only: the processor checks


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(choices)}"


def _reason(reason: str) -> str:
    if not reason.strip():
        raise InterventionError("give a --reason: every intervention is audited")
    return reason.strip()


def _not_ejected(view: MouseView | None, what: str) -> None:
    if view is not None and view.ejected:
        raise InterventionError(
            f"mouse {view.mouse_id} is ejected: cannot {what} it (enrol it again to train it)"
        )


# -- building the commands ------------------------------------------------------------------------


def build_override(
    mouse_id: str,
    stage: str,
    reason: str,
    by: str,
    from_stage: str | None = None,
    view: MouseView | None = None,
    catalog: CurriculumCatalog | None = None,
    requested_at: datetime | None = None,
) -> OverrideStage:
    """The OverrideStage command, after the checks that can be made here.

    Raises:
        InterventionError: no reason, an ejected mouse, or a stage its curriculum lacks.
    """
    from shaping.schemas.commands import OverrideStage

    why = _reason(reason)
    _not_ejected(view, "override the stage of")
    curriculum = _curriculum(view, catalog)
    if curriculum is not None and not curriculum.has_stage(stage):
        names = list(getattr(curriculum, "stage_names", []))
        raise InterventionError(
            f"{curriculum.name} {curriculum.version} has no stage {stage!r}; "
            f"{_suggest(stage, names)}"
        )
    seen = from_stage if from_stage is not None else (view.stage if view is not None else None)
    return OverrideStage(
        mouse_id=mouse_id,
        requested_at=requested_at or datetime.now(UTC),
        requested_by=by,
        to_stage=stage,
        from_stage=seen,
        reason=why,
    )


def build_ejection(
    mouse_id: str,
    reason: str,
    by: str,
    view: MouseView | None = None,
    requested_at: datetime | None = None,
) -> EjectMouse:
    """The EjectMouse command.

    Raises:
        InterventionError: no reason, or the mouse is already ejected.
    """
    from shaping.schemas.commands import EjectMouse

    why = _reason(reason)
    _not_ejected(view, "eject")
    return EjectMouse(
        mouse_id=mouse_id,
        requested_at=requested_at or datetime.now(UTC),
        requested_by=by,
        reason=why,
    )


def parse_value(text: str) -> ParamValue:
    """A parameter value typed on the command line: JSON when it parses (``300``, ``0.5``,
    ``true``, ``"text"``), else the text itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise InterventionError(f"{text!r}: a parameter is a number, true/false or text")


def parse_adjustments(sets: Sequence[str], clears: Sequence[str]) -> Parameters:
    """``--set NAME=VALUE`` and ``--clear NAME`` as one adjustment set (None clears).

    Raises:
        InterventionError: a ``--set`` without ``=``, an empty name, nothing to do, or a name
            both set and cleared.
    """
    adjustments: dict[str, ParamValue] = {}
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InterventionError(f"--set {item!r}: write NAME=VALUE, e.g. max_trials=300")
        value = parse_value(text.strip())
        if value is None:
            raise InterventionError(f"--set {item!r}: use --clear {name.strip()} to clear it")
        adjustments[name.strip()] = value
    for name in clears:
        if name in adjustments:
            raise InterventionError(f"{name} is both set and cleared")
        adjustments[name.strip()] = None
    if not adjustments:
        raise InterventionError("nothing to adjust: give --set NAME=VALUE and/or --clear NAME")
    return adjustments


def build_adjustment(
    mouse_id: str,
    sets: Sequence[str],
    clears: Sequence[str],
    reason: str,
    by: str,
    view: MouseView | None = None,
    catalog: CurriculumCatalog | None = None,
    requested_at: datetime | None = None,
) -> AdjustParameters:
    """The AdjustParameters command, checked against what the mouse's stage allows.

    Raises:
        InterventionError: bad ``--set``/``--clear``, no reason, an ejected mouse, or an
            adjustment the stage does not allow (with the allowed names suggested).
    """
    from shaping.schemas.commands import AdjustParameters
    from shaping.services.domain import CurriculumError
    from shaping.services.domain.interventions import check_adjustments

    why = _reason(reason)
    adjustments = parse_adjustments(sets, clears)
    _not_ejected(view, "adjust")
    curriculum = _curriculum(view, catalog)
    if curriculum is not None and view is not None and view.stage is not None:
        allowed = _adjustable(curriculum, view.stage)
        for name in adjustments:
            if allowed is not None and name not in allowed:
                raise InterventionError(
                    f"{name} is not adjustable at {view.stage} ({curriculum.name} "
                    f"{curriculum.version}); {_suggest(name, allowed) if allowed else 'none is'}"
                )
        requested = {k: v for k, v in adjustments.items() if v is not None}
        try:
            check_adjustments(curriculum, view.stage, requested)
        except CurriculumError as exc:
            raise InterventionError(str(exc)) from exc
    return AdjustParameters(
        mouse_id=mouse_id,
        requested_at=requested_at or datetime.now(UTC),
        requested_by=by,
        adjustments=adjustments,
        reason=why,
    )


def _adjustable(curriculum: CurriculumEngine, stage: str) -> list[str] | None:
    """Names a trainer may adjust at ``stage`` (None: this curriculum cannot say)."""
    try:
        compiled = curriculum.stage(stage)  # type: ignore[attr-defined]
    except Exception:
        return None
    return sorted(getattr(compiled, "adjustable", {}) or {})


# -- publishing a command and waiting for the answer ---------------------------------------------

ANSWERED_BY_ASSIGNMENT = ("assignments", "dead_letter")
"""Where the answer to an intervention comes: the assignment its event causes, or a refusal."""

ANSWERED_BY_EVENT = ("events", "dead_letter")
"""Where the answer to an enrolment comes: its event on the events topic, or a refusal."""


@dataclass(frozen=True)
class Outcome:
    """What became of a published command.

    Attributes:
        partition, offset: where the command was written (on the commands topic).
        answer: the processor's answer (the event that honours the command, or the
            AssignmentIssued that event caused, or an EventRejected), or None (no answer in
            time).
        answer_partition, answer_offset: where the answer was read, when it was.
    """

    partition: int
    offset: int
    answer: Event | None
    answer_partition: int | None = None
    answer_offset: int | None = None
    topic: str = ""
    """Where the command was written (:func:`command_topic`)."""


def command_topic(settings: Settings) -> str:
    """Where an operator's command goes: on a secured cluster (the connection names a SASL
    principal) the principal's ingress topic, ``<prefix>.operator.<name>``, which the ingress
    gate forwards to the commands topic when ``requested_by`` is that name (no operator may
    write the commands topic itself; docs/security.md); else the commands topic."""
    name = settings.kafka.sasl_username
    if name is None:
        return settings.topics.commands
    return settings.topics.operator_ingress(name)


def answered_event(
    settings: Settings, command: Command, codec: EventCodec, wait_s: float, what: str
) -> tuple[str, bool]:
    """Sends a command whose answer is its event (an enrolment, the allowed rigs) and waits up
    to ``wait_s`` for it; returns where the answer was read (or the command written, when no
    answer came in time) and whether it came.

    Raises:
        OperatorError: no broker answers, the topics do not exist, the write fails, or the
            processor refused the command (``what`` names it in the message, with the reason).
    """
    from shaping.schemas.events import EventRejected
    from shaping.services.operator.errors import OperatorError

    try:
        outcome = send_command(settings, command, codec, wait_s, answered_on=ANSWERED_BY_EVENT)
    except DeliveryError as exc:
        raise OperatorError(str(exc)) from exc
    answer = outcome.answer
    if isinstance(answer, EventRejected):
        raise OperatorError(f"the processor refused {what}: {printable(answer.reason)}")
    if answer is not None:
        return f"{settings.topics.events}[{outcome.answer_partition}]@{outcome.answer_offset}", True
    written = outcome.topic or settings.topics.commands
    return f"{written}[{outcome.partition}]@{outcome.offset}", False


def send_command(
    settings: Settings,
    command: Command,
    codec: EventCodec,
    wait_s: float = DEFAULT_WAIT_S,
    answered_on: Sequence[str] = ANSWERED_BY_ASSIGNMENT,
) -> Outcome:
    """Publishes the command (to the commands topic, or the operator's ingress topic on a
    secured cluster: :func:`command_topic`) and waits up to ``wait_s`` for the processor's
    answer on the topics of the kinds ``answered_on``.

    The answer is the first of: an EventRejected caused by the command (refused when judged)
    or by the event that honours it (refused when folded, should the mouse have changed in
    between); an AssignmentIssued caused by that event; that event itself, on the events
    topic (its id is :attr:`Command.answer_id`).

    Raises:
        DeliveryError: no broker answers, the topics do not exist, or the write fails.
    """
    from kafka.errors import KafkaError, KafkaTimeoutError

    from shaping.schemas.codec import encode_key
    from shaping.schemas.headers import headers_for
    from shaping.services.adapters.errors import TopicMissingError
    from shaping.services.adapters.kafka import consumer as kafka_consumer
    from shaping.services.adapters.kafka import producer as kafka_producer
    from shaping.services.adapters.topics import wait_for_partitions

    topics = settings.topics
    connection = settings.kafka
    try:
        target = command_topic(settings)
    except ValueError as exc:  # a principal name that cannot name a topic
        raise DeliveryError(f"SHAPING_KAFKA_SASL_USERNAME: {exc}") from exc
    unreachable = (
        f"no Kafka broker answered at {settings.bootstrap} within {CONNECT_TIMEOUT_S:g} s; start "
        "one (`make kafka-up`) or pass --bootstrap"
    )
    consumer: Any = None
    try:
        if wait_s > 0:
            # Read the answer topics from their current ends, fixed before the command goes out.
            consumer = kafka_consumer(
                connection,
                "shaping-operator-answer",
                bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
            )
            watched = [topics.of_kind(kind) for kind in answered_on]  # type: ignore[arg-type]
            partitions = wait_for_partitions(consumer, watched, CONNECT_TIMEOUT_S) or []
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for tp in partitions:
                consumer.position(tp)  # fixes the end now, before the command goes out
        producer = kafka_producer(
            connection,
            "shaping-operator",
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
            bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        )
    except TopicMissingError as exc:
        _close(consumer)
        raise DeliveryError(str(exc)) from exc
    except KafkaError as exc:
        _close(consumer)
        raise DeliveryError(unreachable) from exc
    try:
        value = codec.encode(command)
        future = producer.send(
            target,
            key=encode_key(command.mouse_id),
            value=value,
            headers=headers_for(value),
        )
        metadata = future.get(timeout=SEND_TIMEOUT_S)
    except KafkaTimeoutError as exc:
        _close(consumer)
        raise DeliveryError(
            f"could not write to topic {target!r} within {SEND_TIMEOUT_S:g} s: does "
            "it exist? (`shaping topics create`; an operator's ingress topic is made by "
            "`kafka.sh add-principal NAME operator`)"
        ) from exc
    except KafkaError as exc:
        _close(consumer)
        raise DeliveryError(f"Kafka refused the command: {exc}") from exc
    finally:
        producer.close(timeout=10)
    answer: tuple[Event, int, int] | None = None
    if consumer is not None:
        try:
            answer = _await_answer(consumer, codec, command, wait_s)
        except KafkaError:
            answer = None  # the command is out; the answer shows in `shaping history`
        finally:
            _close(consumer)
    if answer is None:
        return Outcome(int(metadata.partition), int(metadata.offset), None, topic=target)
    event, partition, offset = answer
    return Outcome(
        int(metadata.partition), int(metadata.offset), event, partition, offset, topic=target
    )


def _await_answer(
    consumer: Any, codec: EventCodec, command: Command, wait_s: float
) -> tuple[Event, int, int] | None:
    from shaping.schemas.errors import SerializationError
    from shaping.schemas.events import AssignmentIssued, EventRejected

    answer_id = command.answer_id
    causes = {command.command_id, answer_id}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            for record in records:
                if record.key is not None and record.key != command.mouse_id.encode():
                    continue  # another mouse's (the events topic is busy): not decoded
                try:
                    event = codec.decode(record.value)
                except SerializationError:
                    continue
                if (
                    (isinstance(event, EventRejected) and event.causation_id in causes)
                    or (isinstance(event, AssignmentIssued) and event.causation_id == answer_id)
                    or event.event_id == answer_id
                ):
                    return event, record.partition, record.offset
    return None


def _close(consumer: Any) -> None:
    if consumer is not None:
        consumer.close()


# -- the interventions, from the request to the processor's answer ------------------------------


def operator_name(by: str | None, settings: Settings | None = None) -> str:
    """Who decides (:func:`shaping.services.operator.identity.operator_identity`): the
    principal ``settings`` authenticate as, which ``by`` may only repeat; on a plaintext
    connection (or without settings) ``by``, else $SHAPING_OPERATOR, else the login name.

    Raises:
        InterventionError: ``by`` names someone other than the authenticated principal.
    """
    from shaping.services.operator.identity import IdentityError, operator_identity

    try:
        return operator_identity(settings, by).name
    except IdentityError as exc:
        raise InterventionError(str(exc)) from exc


def checked_view(settings: Settings, mouse_id: str, warn: Warn | None = None) -> MouseView | None:
    """The mouse as the status tables show it; None, with a warning, when they cannot be read
    here (the command then goes out unchecked).

    Raises:
        InterventionError: the tables have no such mouse (closest ids named).
    """
    view = mouse_view(settings.db_url, mouse_id)
    if view is None:
        (warn or _warn_on_stderr)(
            f"warning: cannot read the status tables at {settings.db_url_shown}; sending unchecked "
            "(the processor judges it)"
        )
    return view


def load_catalog(
    load: Callable[[], CurriculumCatalog], warn: Warn | None = None
) -> CurriculumCatalog | None:
    """The curricula ``load`` gives (the ones the processor loads too:
    :func:`shaping.services.bootstrap.catalog`); None, with a warning, when they cannot be
    loaded here (the command then goes out, and the processor alone judges it)."""
    try:
        return load()
    except Exception as exc:  # the command still goes out; the processor judges it
        (warn or _warn_on_stderr)(f"warning: cannot load the curricula here: {exc}")
        return None


@dataclass(frozen=True)
class Delivery:
    """A published intervention and what the processor answered in time.

    Attributes:
        event: the event the command asks for (its id derived from the command's).
        what: what it is called in messages: override, ejection or adjustment.
        where: ``topic[partition]@offset`` of the command.
        answer: the processor's AssignmentIssued, or None (no answer within ``wait_s``).
        wait_s: how long the answer was waited for (0: not at all).
        command: the command as published.
    """

    event: Event
    what: str
    where: str
    answer: Event | None
    wait_s: float
    command: Command | None = None

    def report(self) -> list[str]:
        """What to tell the trainer, a line each."""
        from shaping.schemas.events import AssignmentIssued

        event, answer = self.event, self.answer
        if isinstance(answer, AssignmentIssued):
            return [
                f"{self.what} of {event.mouse_id} honoured (event {printable(event.event_id)}, "
                f"{self.where}): next session {answer.session_number}, stage "
                f"{printable(answer.stage)}",
                f"  {printable(answer.reason_detail)}",
            ]
        waited = f"within {self.wait_s:g} s " if self.wait_s > 0 else ""
        return [
            f"sent the {self.what} of {event.mouse_id} (event {event.event_id}, {self.where}); "
            f"no answer from the processor {waited}yet: `shaping history {event.mouse_id}` "
            "shows it"
        ]


def deliver(
    settings: Settings,
    command: Command,
    what: str,
    codec: EventCodec,
    wait_s: float = DEFAULT_WAIT_S,
) -> Delivery:
    """Publishes the intervention and waits up to ``wait_s`` for the processor's answer.

    Args:
        what: what the intervention is called in messages (override, ejection, adjustment).

    Raises:
        DeliveryError: as :func:`send_command`.
        InterventionRefused: the processor refused it (its reason in the message).
    """
    from shaping.schemas.events import EventRejected

    outcome = send_command(settings, command, codec, wait_s)
    answer = outcome.answer
    event = command.answer()
    if isinstance(answer, EventRejected):
        raise InterventionRefused(
            f"the processor refused the {what} of {command.mouse_id}: {printable(answer.reason)}",
            event,
            answer,
        )
    where = f"{outcome.topic or settings.topics.commands}[{outcome.partition}]@{outcome.offset}"
    return Delivery(event, what, where, answer, wait_s, command)


def request_override(
    settings: Settings,
    mouse_id: str,
    stage: str,
    reason: str,
    by: str | None = None,
    from_stage: str | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    warn: Warn | None = None,
    *,
    codec: EventCodec,
    catalog: CurriculumCatalog | None = None,
) -> Delivery:
    """Moves a mouse to ``stage`` by hand: checks, publishes an OverrideStage, waits.

    Args:
        catalog: the curricula to check the stage against (None: not checked here).

    Raises:
        InterventionError: as :func:`checked_view` and :func:`build_override`;
            DeliveryError and InterventionRefused as :func:`deliver`.
    """
    view = checked_view(settings, mouse_id, warn)
    command = build_override(
        mouse_id, stage, reason, operator_name(by, settings), from_stage, view, catalog
    )
    return deliver(settings, command, "override", codec, wait_s)


def request_ejection(
    settings: Settings,
    mouse_id: str,
    reason: str,
    by: str | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    warn: Warn | None = None,
    *,
    codec: EventCodec,
) -> Delivery:
    """Takes a mouse out of training: checks, publishes an EjectMouse, waits.

    Raises:
        InterventionError: as :func:`checked_view` and :func:`build_ejection`;
            DeliveryError and InterventionRefused as :func:`deliver`.
    """
    view = checked_view(settings, mouse_id, warn)
    command = build_ejection(mouse_id, reason, operator_name(by, settings), view)
    return deliver(settings, command, "ejection", codec, wait_s)


def request_adjustment(
    settings: Settings,
    mouse_id: str,
    sets: Sequence[str],
    clears: Sequence[str],
    reason: str,
    by: str | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    warn: Warn | None = None,
    *,
    codec: EventCodec,
    catalog: CurriculumCatalog | None = None,
) -> Delivery:
    """Adjusts some of a mouse's parameters (``NAME=VALUE`` sets, names cleared): checks,
    publishes an AdjustParameters, waits.

    Args:
        catalog: the curricula to check the adjustments against (None: not checked here).

    Raises:
        InterventionError: as :func:`checked_view` and :func:`build_adjustment`;
            DeliveryError and InterventionRefused as :func:`deliver`.
    """
    view = checked_view(settings, mouse_id, warn)
    command = build_adjustment(
        mouse_id, sets, clears, reason, operator_name(by, settings), view, catalog
    )
    return deliver(settings, command, "adjustment", codec, wait_s)


# -- history and status -------------------------------------------------------------------------


def timeline(engine: Engine, mouse_id: str) -> list[dict[str, Any]]:
    """A mouse's interventions and warnings, oldest first, as display rows (``at``, ``what``,
    ``by``, ``why``, ``outcome``, ``command``, ``mouse``). Empty when the tables are older than
    this feature."""
    from sqlalchemy import inspect, select

    from shaping.services.projector.tables import interventions, training_warnings

    present = set(inspect(engine).get_table_names())
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        if interventions.name in present:
            query = select(interventions).where(interventions.c.mouse_id == mouse_id)
            for r in conn.execute(query).mappings():
                rows.append(intervention_row(dict(r)))
        if training_warnings.name in present:
            query = select(training_warnings).where(training_warnings.c.mouse_id == mouse_id)
            for r in conn.execute(query).mappings():
                rows.append(
                    {
                        "at": r["occurred_at"],
                        "what": f"warning {r['kind']} (at {r['stage']})",
                        "by": "curriculum",
                        "why": r["message"],
                        "outcome": f"session {r['session_id']}" if r["session_id"] else "",
                        "command": "",
                        "mouse": r["mouse_id"],
                    }
                )
    floor = datetime.min.replace(tzinfo=UTC)
    rows.sort(key=lambda row: row["at"] or floor)
    return rows


def intervention_row(r: dict[str, Any]) -> dict[str, Any]:
    """An ``interventions`` table row as a display row: ``at``, ``what``, ``by`` (who asked:
    the principal on a secured deployment), ``why``, ``outcome``, ``command`` (the command
    it answers; empty when the tables predate it or it was sent as an event), ``mouse``."""
    kind = r["kind"]
    if kind == "override":
        seen = f"{r['from_stage']} -> " if r["from_stage"] else "-> "
        what = f"override {seen}{r['to_stage']}"
    elif kind == "adjust":
        values = json.loads(r["adjustments_json"] or "{}")
        shown = ", ".join(
            f"{k} cleared" if v is None else f"{k}={v}" for k, v in sorted(values.items())
        )
        what = f"adjust {shown}"
    elif kind == "eject":
        what = "eject"
    elif kind == "allow-rigs":
        what = "allow rigs " + ", ".join(json.loads(r.get("rig_ids_json") or "[]"))
    elif kind == "release":
        what = "release the welfare hold for today"
    else:
        what = "intervention (its event not projected yet)"
    if r["refused_reason"]:
        outcome = f"refused: {r['refused_reason']}"
    elif r["honoured_at"] and kind == "allow-rigs":
        outcome = "honoured: other rigs are refused"
    elif r["assignment_id"] and kind == "release":
        outcome = "honoured: cleared to train today"
    elif r["assignment_id"] and kind == "eject":
        outcome = "honoured: no more sessions"
    elif r["assignment_id"]:
        outcome = f"honoured: next stage {r['assigned_stage']}"
    else:
        outcome = "no answer yet"
    return {
        "at": r["requested_at"] or r["honoured_at"] or r["refused_at"],
        "what": what,
        "by": r["requested_by"] or "",
        "why": r["reason"] or "",
        "outcome": outcome,
        "command": r.get("command_id") or "",
        "mouse": r["mouse_id"],
    }


def show_timeline(console: Console, db_url: str | None, mouse_id: str) -> None:
    """Prints the mouse's interventions and warnings (``shaping history`` calls it)."""
    from rich.table import Table
    from rich.text import Text

    from shaping.services.adapters.settings import Settings
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database

    try:
        engine = open_database(db_url if db_url is not None else Settings().db_url)
    except OperatorError:
        return
    try:
        rows = timeline(engine, mouse_id)
    finally:
        engine.dispose()
    if not rows:
        return
    table = Table(title="interventions and warnings", title_justify="left", show_lines=True)
    for title in ("when", "what", "by", "why", "outcome"):
        table.add_column(title)
    for row in rows:
        at = row["at"].strftime("%Y-%m-%d %H:%M") if row["at"] is not None else ""
        cells = (at, row["what"], row["by"], row["why"], row["outcome"])
        table.add_row(*(Text(printable(cell)) for cell in cells))
    console.print(table)
