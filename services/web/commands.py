"""How the page's actions reach the log: as the same commands the command line sends.

A form becomes a command through the intervention use cases of
:mod:`shaping.services.operator.interventions` (``build_override``, ``build_ejection``,
``build_adjustment``: the same checks, against the status tables and the mouse's curriculum,
as ``shaping override``, ``eject`` and ``adjust``), asked for by ``<principal>/<user>``. A
:class:`Sender` then delivers it:

* :class:`KafkaSender` publishes it with :func:`~shaping.services.operator.interventions.deliver`
  (to the commands topic, or the web principal's ingress topic on a secured broker) and waits
  for the processor's answer;
* :class:`EmbeddedSender` appends it to an embedded log (the demo's ``events.jsonl``), runs the
  processor step and the projector over it in process (:class:`EmbeddedRuntime`), and appends
  the new records to the file.

Either way the answer is a :class:`~shaping.services.operator.interventions.Delivery`, or an
:class:`~shaping.services.operator.interventions.InterventionError` with a message for the
trainer (refused by the processor, not delivered, or impossible as asked).

Husbandry (a weight, water, the release of a welfare hold) goes the same way through the
husbandry use cases of :mod:`shaping.services.operator.husbandry`: a builder
(``build_weight``, ``build_water``, ``build_release``) makes the command and
:func:`~shaping.services.operator.husbandry.submit` sends it through the sender's
:meth:`Sender.husbandry` (Kafka: ``kafka_sender``; embedded: ``embedded_sender`` and the file
saved) and reads the answer, a :class:`~shaping.services.operator.husbandry.Recorded`, or a
:class:`~shaping.services.operator.husbandry.HusbandryError` for the person. A weight or a
water entry the lab's policy refuses (implausible, or a jump from the last weight not
confirmed) is refused here before anything is sent, with the policy's reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, EventRejected
from shaping.services.operator.husbandry import (
    HusbandryError,
    Recorded,
    build_release,
    build_water,
    build_weight,
    embedded_sender,
    kafka_sender,
    known_from_tables,
    submit,
)
from shaping.services.operator.husbandry import Sender as HusbandrySender
from shaping.services.operator.interventions import (
    DEFAULT_WAIT_S,
    Delivery,
    DeliveryError,
    InterventionError,
    InterventionRefused,
    MouseView,
    build_adjustment,
    build_ejection,
    build_override,
    deliver,
    mouse_view,
)
from shaping.services.operator.terminal import printable

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.schemas.commands import Command
    from shaping.services.adapters.settings import Settings
    from shaping.services.domain import CurriculumCatalog
    from shaping.services.domain.state import Husbandry
    from shaping.services.domain.welfare import WelfarePolicy
    from shaping.services.embedded.log import LogRecord
    from shaping.services.embedded.runtime import EmbeddedRuntime
    from shaping.services.operator.husbandry import Answer


SETTLE_S = 10.0
"""How long the page waits, after the processor answered on Kafka, for the projector to
write the answer (and the assignment it causes) into the status tables, so that the page
shown next already says it."""

GATE_COMMANDS = frozenset({"RecordWeight", "ReleaseHold"})
"""The page's husbandry commands whose answer makes the gate re-issue a restricted mouse's
assignment (``services/domain/gating.py``)."""

RuntimeFactory = Callable[[Path], "EmbeddedRuntime"]
"""Builds an embedded runtime that has taken up the log at a path (the entry point wires the
codec, the curricula and the projection store)."""


class Sender(Protocol):
    """Delivers a command and returns the processor's answer."""

    where: str
    """Where commands go, for people (shown in the page's footer)."""

    settle_s: float
    """How long to wait, after an answer, for the status tables to show it (0: they do at
    once, as the embedded runtime projects in process)."""

    def send(self, command: Command, what: str) -> Delivery:
        """Delivers ``command`` (called ``what`` in messages: override, ejection, ...).

        Raises:
            InterventionError: refused, or not delivered.
        """
        ...  # pragma: no cover

    def husbandry(self) -> HusbandrySender:
        """Sends a husbandry command and returns the processor's answer (raises
        HusbandryError when it did not reach the log)."""
        ...  # pragma: no cover

    def close(self) -> None:
        """Releases what the sender holds."""
        ...  # pragma: no cover


class KafkaSender:
    """Commands to Kafka, as the command line sends them (``settings`` name the broker)."""

    def __init__(
        self, settings: Settings, codec: EventCodec, wait_s: float = DEFAULT_WAIT_S
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.wait_s = wait_s
        self.where = f"Kafka at {settings.bootstrap}"
        self.settle_s = SETTLE_S

    def send(self, command: Command, what: str) -> Delivery:
        """Publishes ``command`` and waits for the processor's answer (:func:`deliver`)."""
        return deliver(self.settings, command, what, self.codec, self.wait_s)

    def husbandry(self) -> HusbandrySender:
        """Publishes a husbandry command and waits for its answer (``kafka_sender``)."""
        return kafka_sender(self.settings, self.codec, self.wait_s)

    def close(self) -> None:
        """Nothing to release: each command opens its own clients."""


class EmbeddedSender:
    """Commands to an embedded log saved as JSON Lines (a demo's ``events.jsonl``), processed
    and projected in this process into the status tables the page reads.

    The log is taken up once (:meth:`EmbeddedRuntime.resume`), and again whenever the file
    changed under it (the demo was run again). One command at a time (a lock).
    """

    def __init__(self, runtime_factory: RuntimeFactory, log_path: Path) -> None:
        self.log_path = log_path
        self.where = f"the embedded log {log_path}"
        self.settle_s = 0.0
        self._factory = runtime_factory
        self._lock = threading.Lock()
        self._runtime: EmbeddedRuntime | None = None
        self._size = -1
        if not log_path.is_file():
            raise InterventionError(
                f"no embedded log at {log_path}: point --embedded-log at a demo's events.jsonl"
            )

    def _current(self) -> EmbeddedRuntime:
        size = self.log_path.stat().st_size
        if self._runtime is None or size != self._size:
            self._close_store()
            self._runtime = self._factory(self.log_path)
            self._size = size
        return self._runtime

    def send(self, command: Command, what: str) -> Delivery:
        """Runs ``command`` through the embedded processor and projector; saves the log."""
        with self._lock:
            runtime = self._current()
            before = len(runtime.log)
            runtime.send_commands([command])
            added = self._save(runtime, before)
        return _answered(command, what, added, runtime.codec, runtime.topics.commands)

    def husbandry(self) -> HusbandrySender:
        """Runs a husbandry command through the embedded processor and projector
        (``embedded_sender``); saves the log."""

        def send(command: Command) -> Answer:
            with self._lock:
                runtime = self._current()
                before = len(runtime.log)
                answer = embedded_sender(runtime)(command)
                self._save(runtime, before)
            return answer

        return send

    def _save(self, runtime: EmbeddedRuntime, before: int) -> Sequence[LogRecord]:
        """Appends the log's records from ``before`` on to the file; returns them."""
        from shaping.services.embedded.log import jsonl_line

        added = runtime.log.records()[before:]
        with self.log_path.open("a", encoding="utf-8") as out:
            for r in added:
                line = jsonl_line(r.topic, r.partition, r.offset, r.key, r.value, runtime.codec)
                out.write(line + "\n")
        self._size = self.log_path.stat().st_size
        return added

    def close(self) -> None:
        """Closes the status tables the runtime writes."""
        self._close_store()
        self._runtime = None

    def _close_store(self) -> None:
        store = self._runtime.store if self._runtime is not None else None
        close = getattr(store, "close", None)
        if callable(close):
            close()


def _answered(
    command: Command, what: str, added: Sequence[LogRecord], codec: EventCodec, topic: str
) -> Delivery:
    """The answer to ``command`` among the records it ``added`` to the log."""
    event = command.answer()
    causes = {command.command_id, event.event_id}
    where = ""
    for record in added:
        if record.topic == topic:
            where = f"{topic}[{record.partition}]@{record.offset}"
            continue
        try:
            answer = codec.decode(record.value)
        except SerializationError:
            continue
        if isinstance(answer, EventRejected) and answer.causation_id in causes:
            raise InterventionRefused(
                f"the processor refused the {what} of {command.mouse_id}: "
                f"{printable(answer.reason)}",
                event,
                answer,
            )
        if isinstance(answer, AssignmentIssued) and answer.causation_id == event.event_id:
            return Delivery(event, what, where, answer, 0.0, command)
    return Delivery(event, what, where, None, 0.0, command)


@dataclass(frozen=True)
class Requester:
    """Who asks, as the commands carry it: ``<principal>/<user>``."""

    principal: str
    user: str

    @property
    def name(self) -> str:
        """The ``requested_by`` of the user's commands."""
        return f"{self.principal}/{self.user}"


class Interventions:
    """The page's actions, as commands built by the CLI's use cases and sent by ``sender``.

    Args:
        db_url: the status tables the checks read (the same the page shows).
        sender: where the commands go.
        catalog: the curricula to check stages and parameters against (None: unchecked here,
            the processor judges).
        principal: the name the web service's commands are asked for under.
        policy: the lab's welfare policy, which weights and water are checked against before
            they are sent (None: the default policy; the processor checks with its own).
    """

    def __init__(
        self,
        db_url: str,
        sender: Sender,
        catalog: CurriculumCatalog | None,
        principal: str = "web",
        policy: WelfarePolicy | None = None,
    ) -> None:
        from shaping.services.domain.welfare import DEFAULT_POLICY

        self.db_url = db_url
        self.sender = sender
        self.catalog = catalog
        self.principal = principal
        self.policy = policy or DEFAULT_POLICY

    def _view(self, mouse_id: str) -> MouseView | None:
        view = mouse_view(self.db_url, mouse_id)
        if view is None:
            from sqlalchemy.engine import make_url

            shown = make_url(self.db_url).render_as_string(hide_password=True)
            raise DeliveryError(f"cannot read the status tables at {shown}")
        return view

    def requester(self, user: str) -> Requester:
        """Who the user's commands are asked for by."""
        return Requester(self.principal, user)

    def override(
        self, user: str, mouse_id: str, stage: str, reason: str, from_stage: str | None
    ) -> Delivery:
        """Moves the mouse to ``stage`` (refused if it is no longer at ``from_stage``)."""
        view = self._view(mouse_id)
        by = self.requester(user).name
        command = build_override(mouse_id, stage, reason, by, from_stage, view, self.catalog)
        return self._settled(self.sender.send(command, "override"))

    def eject(self, user: str, mouse_id: str, reason: str) -> Delivery:
        """Takes the mouse out of training."""
        view = self._view(mouse_id)
        command = build_ejection(mouse_id, reason, self.requester(user).name, view)
        return self._settled(self.sender.send(command, "ejection"))

    def adjust(
        self, user: str, mouse_id: str, sets: Sequence[str], clears: Sequence[str], reason: str
    ) -> Delivery:
        """Sets (``NAME=VALUE``) and clears (``NAME``) some of the mouse's parameters."""
        view = self._view(mouse_id)
        by = self.requester(user).name
        command = build_adjustment(mouse_id, sets, clears, reason, by, view, self.catalog)
        return self._settled(self.sender.send(command, "adjustment"))

    # -- reading one's writes -------------------------------------------------------------------

    def _settled(self, delivery: Delivery) -> Delivery:
        """Waits (up to the sender's ``settle_s``) until the tables show the delivery."""
        ids = [delivery.event.event_id]
        if delivery.answer is not None:
            ids.append(delivery.answer.event_id)
        self.settle(ids)
        return delivery

    def settle(self, event_ids: Sequence[str]) -> bool:
        """Waits up to the sender's ``settle_s`` until the projector has written every one of
        ``event_ids`` into the status tables; whether it has (True at once without a wait)."""
        import time

        from sqlalchemy import select

        from shaping.services.operator.errors import OperatorError
        from shaping.services.operator.queries import open_database
        from shaping.services.projector.tables import projected_events

        if self.sender.settle_s <= 0 or not event_ids:
            return True
        try:
            engine = open_database(self.db_url)
        except OperatorError:
            return False
        deadline = time.monotonic() + self.sender.settle_s
        try:
            while True:
                with engine.connect() as conn:
                    found = set(
                        conn.execute(
                            select(projected_events.c.event_id).where(
                                projected_events.c.event_id.in_(list(event_ids))
                            )
                        ).scalars()
                    )
                if found >= set(event_ids):
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
        finally:
            engine.dispose()

    # -- husbandry ------------------------------------------------------------------------------

    def _restricted(self, mouse_id: str) -> bool:
        """Whether the tables show the mouse on water restriction (its gate changes)."""
        from sqlalchemy import select

        from shaping.services.operator.errors import OperatorError
        from shaping.services.operator.queries import open_database
        from shaping.services.projector.tables import welfare_gate

        try:
            engine = open_database(self.db_url)
        except OperatorError:
            return False
        try:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        select(welfare_gate.c.restricted).where(welfare_gate.c.mouse_id == mouse_id)
                    ).scalar()
                )
        finally:
            engine.dispose()

    def _submit(self, command: Command) -> Recorded:
        """Submits ``command``; then, once answered, waits until the tables show the answer and,
        for a weight or a release of a restricted mouse, the assignment the gate re-issues."""
        from shaping.services.domain.outputs import derived_event_id

        # The gate re-issues the assignment of a restricted mouse for a weight or a release
        # (not for water): its id derives from the answer's.
        restricted = (
            self.sender.settle_s > 0
            and command.command_type in GATE_COMMANDS
            and self._restricted(command.mouse_id)
        )
        recorded = submit(command, self.sender.husbandry(), known_from_tables(self.db_url))
        event = recorded.event
        if event is not None:
            ids = [event.event_id]
            if restricted:
                ids.append(derived_event_id(event, "AssignmentIssued"))
            if not self.settle(ids):
                recorded = Recorded(
                    recorded.command,
                    event,
                    recorded.where + "; the status tables do not show it yet: reload in a moment",
                )
        return recorded

    def _last_weight(self, mouse_id: str) -> Husbandry:
        """The mouse's newest weight as the state keeps it (for the policy's jump check)."""
        from sqlalchemy import select

        from shaping.services.domain.state import Husbandry, WeightEntry
        from shaping.services.operator.errors import OperatorError
        from shaping.services.operator.queries import open_database
        from shaping.services.projector.tables import husbandry_weights

        try:
            engine = open_database(self.db_url)
        except OperatorError:
            return Husbandry()
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    select(husbandry_weights.c.weighed_at, husbandry_weights.c.grams)
                    .where(husbandry_weights.c.mouse_id == mouse_id)
                    .order_by(
                        husbandry_weights.c.weighed_at.desc(), husbandry_weights.c.event_id.desc()
                    )
                    .limit(1)
                ).first()
        finally:
            engine.dispose()
        if row is None:
            return Husbandry()
        return Husbandry(weights=(WeightEntry(at=row[0], grams=row[1]),))

    def weigh(
        self,
        user: str,
        mouse_id: str,
        grams: float,
        *,
        confirmed: bool = False,
        scale_id: str | None = None,
    ) -> Recorded:
        """Records a weight (a RecordWeight). A weight the policy refuses (implausible, or
        further from the last one than it allows without confirmation) is refused here.

        Raises:
            HusbandryError: refused here or by the processor, or not delivered.
        """
        from shaping.services.domain.welfare import weight_problem

        command = build_weight(
            mouse_id, grams, self.requester(user).name, confirmed=confirmed, scale_id=scale_id
        )
        problem = weight_problem(self._last_weight(mouse_id), grams, confirmed, self.policy)
        if problem is not None:
            raise HusbandryError(problem.replace("(--confirm)", "(tick “confirm”)"))
        return self._submit(command)

    def water(self, user: str, mouse_id: str, ml: float, kind: str, water_type: str) -> Recorded:
        """Records water given (a GiveWater).

        Raises:
            HusbandryError: refused here or by the processor, or not delivered.
        """
        from shaping.services.domain.welfare import water_problem

        command = build_water(
            mouse_id, ml, self.requester(user).name, kind=kind, water_type=water_type
        )
        problem = water_problem(ml, kind, self.policy)
        if problem is not None:
            raise HusbandryError(problem)
        return self._submit(command)

    def release(self, user: str, mouse_id: str, reason: str) -> Recorded:
        """Releases the mouse's welfare hold for today (a ReleaseHold), with a reason.

        Raises:
            HusbandryError: refused (e.g. not on restriction) or not delivered.
        """
        return self._submit(build_release(mouse_id, self.requester(user).name, reason))
