"""The ingress gate's judgement of one record: forward it, or say in words why not.

Kafka cannot tell a reader who produced a record, but its ACLs decide who may write a topic.
On a secured cluster every rig ``NAME`` writes only ``<prefix>.rig.NAME`` and every operator
``NAME`` only ``<prefix>.operator.NAME`` (:mod:`shaping.services.adapters.acls`), so the topic
a record was read from names its author. :class:`IngressGate` holds the record against that
author:

- from ``<prefix>.rig.NAME``: a rig's session fact (:data:`~shaping.schemas.events.RIG_EVENTS`)
  whose ``rig_id`` is ``NAME``, keyed by its mouse, goes on to ``events``;
- from ``<prefix>.operator.NAME``: a command whose ``requested_by`` is ``NAME``, or
  ``NAME/<someone>`` (a service such as ``shaping web`` acting for the person logged in to it:
  the part before the slash is still the authenticated principal), keyed by its mouse and not
  older than the processor would act on, goes on to ``commands``;
- anything else (bytes that do not decode, a type the author may not send, another author's
  name, a missing or wrong key, a stale command) becomes one EventRejected for the dead-letter
  topic, with a reason a person can read and the record's topic, partition and offset.

It performs no I/O and never raises (:meth:`IngressGate.judge`); the Kafka loop is
:mod:`shaping.services.ingress.runner`. What is forwarded is the record itself (key, value and
headers, byte for byte): the gate decides, it does not rewrite.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.commands import COMMAND_TYPES, Command
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    ORIGINAL_KEY_MAX,
    ORIGINAL_VALUE_MAX,
    REASON_MAX,
    RIG_EVENTS,
    Event,
    EventRejected,
)
from shaping.schemas.identifiers import is_id
from shaping.schemas.text import quoted
from shaping.schemas.topics import INGRESS_TARGETS, TopicKind, TopicNames

log = logging.getLogger(__name__)

SERVICE = "ingress"
"""The gate's name in its dead letters (``rejected_by``) and its metrics."""

RejectKind = Literal[
    "undecodable", "invalid", "wrong_type", "impersonation", "key", "stale", "topic", "failed"
]
"""Why the gate refused a record (the metric's ``reason`` label): bytes that are no Shaping
message; a message that breaks the contract; a type its author may not send; another author's
name in it; no key or not its mouse's; a command older than the processor would act on; a topic
that is no ingress topic; a bug in the gate."""

_ERROR_KINDS: dict[RejectKind, str] = {
    "undecodable": "undecodable",
    "invalid": "invalid",
    "wrong_type": "invalid",
    "impersonation": "invalid",
    "key": "invalid",
    "stale": "clock",
    "topic": "invalid",
    "failed": "failed",
}
"""The dead letter's ``error_kind`` (the contract's list) for each of the gate's reasons."""

_RIG_TYPES = tuple(cls.__name__ for cls in RIG_EVENTS)

_REJECT_NAMESPACE = uuid.UUID("9b1f6c52-7d0e-4a8b-b3c4-2e5d8f6a1c07")


def speaks_as(principal: str, requested_by: str) -> bool:
    """Whether a command of ``principal`` may carry ``requested_by``: its own name, or its name,
    a slash and the person it acts for (``web/alice``)."""
    if requested_by == principal:
        return True
    head, slash, person = requested_by.partition("/")
    return bool(slash) and head == principal and bool(person.strip())


@dataclass(frozen=True)
class Forward:
    """Forward the record, as it is, to the topic of ``target``.

    Attributes:
        target: ``events`` (a rig's fact) or ``commands`` (an operator's command).
        message: what the record holds.
    """

    target: TopicKind
    message: Event | Command


@dataclass(frozen=True)
class Reject:
    """Refuse the record: its dead letter is :meth:`IngressGate.dead_letter`.

    Attributes:
        kind: why, for the metrics (:data:`RejectKind`).
        reason: why, for a person.
        message: what the record holds, when it decoded.
    """

    kind: RejectKind
    reason: str
    message: Event | Command | None = None

    @property
    def error_kind(self) -> str:
        """The dead letter's ``error_kind``."""
        return _ERROR_KINDS[self.kind]


Verdict = Forward | Reject


class IngressGate:
    """Judges the records of a deployment's ingress topics (see the module's doc).

    Args:
        topics: the deployment's topic names (which topics are ingress topics, and whose).
        codec: the contract's codec.
        command_max_age: how long after the broker took a command (its ingress record's
            broker time) it may still be forwarded; the processor refuses older ones, and a
            forwarded record gets a fresh broker time on ``commands``, so the gate checks it
            here (None: not checked).
    """

    def __init__(
        self,
        topics: TopicNames,
        codec: EventCodec,
        command_max_age: timedelta | None = timedelta(hours=1),
    ) -> None:
        self.topics = topics
        self.codec = codec
        self.command_max_age = command_max_age

    def target_topic(self, verdict: Forward) -> str:
        """The name of the topic a forwarded record goes to."""
        return self.topics.of_kind(verdict.target)

    def judge(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp: datetime | None = None,
        now: datetime | None = None,
    ) -> Verdict:
        """The verdict on one record of an ingress topic; never raises.

        Args:
            topic: the topic it was read from (it names the author).
            key, value: the record's key and value.
            timestamp: the broker's time of the record (ingress topics use LogAppendTime).
            now: the gate's time (default: the clock); with ``timestamp``, how long a command
                waited.
        """
        try:
            return self._judge(topic, key, value, timestamp, now)
        except Exception as exc:  # a bug, not bad input: park the record, never loop on it
            log.exception("judging a record of %s failed; dead-lettering it", topic)
            return Reject(
                "failed",
                f"the ingress gate failed with {type(exc).__name__}: {quoted(str(exc), 300)}; "
                "this is a bug in Shaping, not bad input: the record is kept here and the gate "
                "went on (report it with this dead letter)",
            )

    def _judge(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp: datetime | None,
        now: datetime | None,
    ) -> Verdict:
        found = self.topics.parse_ingress(topic)
        if found is None:
            return Reject("topic", f"{quoted(topic, 300)} is not an ingress topic")
        kind, name = found
        try:
            message = self.codec.decode_message(value)
        except SerializationError as exc:
            what: RejectKind = "undecodable" if exc.kind == "undecodable" else "invalid"
            return Reject(
                what, f"{kind} {name!r} sent a record that is not accepted: {quoted(str(exc), 500)}"
            )
        if kind == "rig":
            verdict = self._rig(name, message)
        else:
            verdict = self._operator(name, message, timestamp, now)
        if isinstance(verdict, Reject):
            return verdict
        if key is None or key != encode_key(message.mouse_id):
            shown = "none" if key is None else repr(quoted(key.decode("utf-8", "replace"), 80))
            return Reject(
                "key",
                f"the Kafka key ({shown}) must be the mouse id {message.mouse_id!r}",
                message,
            )
        return verdict

    def _rig(self, name: str, message: Event | Command) -> Verdict:
        if not isinstance(message, RIG_EVENTS):
            sent = message.command_type if isinstance(message, Command) else message.event_type
            return Reject(
                "wrong_type",
                f"rig {name!r} may not publish {sent}: a rig publishes only "
                f"{', '.join(_RIG_TYPES)}",
                message,
            )
        if message.rig_id != name:
            claimed = "no rig" if message.rig_id is None else f"rig {message.rig_id!r}"
            return Reject(
                "impersonation",
                f"rig {name!r} may not publish events as {claimed} "
                f"({message.event_type} {message.event_id})",
                message,
            )
        return Forward(INGRESS_TARGETS["rig"], message)

    def _operator(
        self,
        name: str,
        message: Event | Command,
        timestamp: datetime | None,
        now: datetime | None,
    ) -> Verdict:
        if not isinstance(message, Command):
            return Reject(
                "wrong_type",
                f"operator {name!r} may not publish the event {message.event_type}: an "
                f"operator sends commands ({', '.join(sorted(COMMAND_TYPES))})",
                message,
            )
        if not speaks_as(name, message.requested_by):
            return Reject(
                "impersonation",
                f"operator {name!r} may not send commands as "
                f"{quoted(message.requested_by, 80)!r} "
                f"({message.command_type} {message.command_id})",
                message,
            )
        if self.command_max_age is not None and timestamp is not None:
            waited = (now or datetime.now(UTC)) - timestamp
            if waited > self.command_max_age:
                return Reject(
                    "stale",
                    f"the {message.command_type} of operator {name!r} reached the ingress gate "
                    f"{waited.total_seconds():.0f} s after the broker took it, later than the "
                    f"{self.command_max_age.total_seconds():.0f} s a command may wait "
                    "(SHAPING_COMMAND_MAX_AGE_S); send it again if it still holds",
                    message,
                )
        return Forward(INGRESS_TARGETS["operator"], message)

    def dead_letter(
        self,
        verdict: Reject,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
    ) -> EventRejected:
        """The EventRejected of a refused record, for the dead-letter topic (keyed by its
        ``mouse_id``): a bounded copy of the bytes, their size and SHA-256, where the record
        was, and an id derived from that place (a redelivered record gives the same dead
        letter)."""
        value = value or b""
        message = verdict.message
        event = message if isinstance(message, Event) else None
        command = message if isinstance(message, Command) else None
        found = self.topics.parse_ingress(topic)
        author = found[1] if found is not None and found[0] == "rig" else None
        if message is not None:
            mouse_id = message.mouse_id
        else:
            text = (key or b"").decode("utf-8", "replace")
            mouse_id = text if is_id(text) else "unknown"
        when = timestamp or datetime.now(UTC)
        if event is not None and verdict.kind != "stale":
            when = event.occurred_at
        elif command is not None and verdict.kind != "stale":
            when = command.requested_at
        reason = verdict.reason
        if len(reason) > REASON_MAX:
            reason = reason[: REASON_MAX - 40] + f"… (reason cut; {len(reason)} characters)"
        return EventRejected(
            event_id=str(uuid.uuid5(_REJECT_NAMESPACE, f"{topic}/{partition}/{offset}")),
            mouse_id=mouse_id,
            # The rig that wrote the record (its topic says so), not the one it claims to be.
            rig_id=author if author is not None else (event.rig_id if event else None),
            session_id=event.session_id if event else None,
            occurred_at=when,
            causation_id=event.event_id if event else command.command_id if command else None,
            reason=reason,
            error_kind=verdict.error_kind,  # type: ignore[arg-type]
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original_key=None if key is None else key[:ORIGINAL_KEY_MAX],
            original_value=value[:ORIGINAL_VALUE_MAX],
            rejected_by=SERVICE,
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
        )

    def dead_letter_record(
        self,
        verdict: Reject,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
    ) -> tuple[str, bytes, bytes]:
        """``(topic, key, value)`` of the dead letter of a refused record: the dead-letter
        topic, the mouse id and the encoded EventRejected."""
        rejected = self.dead_letter(verdict, key, value, topic, partition, offset, timestamp)
        return (
            self.topics.dead_letter,
            encode_key(rejected.mouse_id),
            self.codec.encode(rejected),
        )


__all__ = ["SERVICE", "Forward", "IngressGate", "Reject", "RejectKind", "Verdict"]
