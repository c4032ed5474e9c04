"""``shaping rigs allow``: name the rigs a mouse may train on, by sending an AllowRigs command.

The command goes to the commands topic, keyed by the mouse id, like every operator's command
(:func:`~shaping.services.operator.interventions.send_command`: an idempotent producer with
``acks=all``). The processor judges it: it appends the RigsAllowed that honours it to the events
topic (its id derived from the command's) and from then on refuses the mouse's rig facts from
any other rig, or it refuses the command with an EventRejected on the dead-letter topic (a mouse
it does not know, say). :func:`request_allowed_rigs` waits for that answer. No assignment
follows: the answer is the RigsAllowed itself, as for an enrolment.

The list replaces the one in force, so allowing one more rig means naming every rig the mouse
may train on. docs/security.md says where this restriction stands among the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shaping.schemas.commands import AllowRigs
from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.settings import Settings

DEFAULT_WAIT_S = 20.0


def build_allowed_rigs(
    mouse_id: str,
    rig_ids: Sequence[str],
    requested_by: str,
    reason: str = "",
    requested_at: datetime | None = None,
) -> AllowRigs:
    """The AllowRigs command.

    Raises:
        OperatorError: no rig, a rig id the id grammar refuses, a rig named twice, or no name
            for who asks.
    """
    if not requested_by.strip():
        raise OperatorError("say who allows the rigs (--by)")
    try:
        return AllowRigs(
            mouse_id=mouse_id,
            requested_at=requested_at or datetime.now(UTC),
            requested_by=requested_by,
            rig_ids=list(rig_ids),
            reason=reason.strip(),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        problems = getattr(exc, "errors", None)
        if callable(problems):
            text = "; ".join(
                str(p.get("msg", "")).removeprefix("Value error, ") for p in problems()
            )
        else:
            text = str(exc)
        raise OperatorError(f"cannot allow these rigs: {text}") from exc


@dataclass(frozen=True)
class Allowance:
    """A sent AllowRigs and what the processor answered in time.

    Attributes:
        command: the AllowRigs as sent.
        where: ``topic[partition]@offset`` of the answering RigsAllowed on the events topic
            when it came in time, else of the command on the commands topic.
        honoured: whether the RigsAllowed came in time.
        wait_s: how long the answer was waited for (0: not at all).
    """

    command: AllowRigs
    where: str
    honoured: bool
    wait_s: float

    def report(self) -> str:
        """What to tell the operator."""
        command = self.command
        rigs = ", ".join(command.rig_ids)
        if self.honoured:
            return (
                f"mouse {command.mouse_id} may now train only on {rigs} (event "
                f"{command.answer_id}, {self.where}); its facts from any other rig are refused"
            )
        waited = f"within {self.wait_s:g} s " if self.wait_s > 0 else ""
        return (
            f"sent the rigs of {command.mouse_id} ({rigs}; command {command.command_id}, "
            f"{self.where}); no answer from the processor {waited}yet: "
            f"`shaping history {command.mouse_id}` shows it"
        )


def request_allowed_rigs(
    settings: Settings, command: AllowRigs, codec: EventCodec, wait_s: float = DEFAULT_WAIT_S
) -> Allowance:
    """Sends the AllowRigs and waits up to ``wait_s`` for the processor's answer.

    Raises:
        OperatorError: no broker answers, the topics do not exist, the write fails, or the
            processor refused the command (its reason in the message).
    """
    from shaping.services.operator.interventions import answered_event

    what = f"the rigs of {command.mouse_id}"
    where, honoured = answered_event(settings, command, codec, wait_s, what)
    return Allowance(command, where, honoured, wait_s)
