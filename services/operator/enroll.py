"""``shaping enroll``: put a mouse on a curriculum by sending an EnrolMouse command.

The command goes to the commands topic, keyed by the mouse id, through an idempotent
kafka-python producer with ``acks=all`` (a retried send is written once). The processor judges
it: it appends the MouseEnrolled that honours it to the events topic (its id derived from the
command's) and issues the mouse's first assignment, or refuses it with an EventRejected on the
dead-letter topic. :func:`request_enrollment` waits for that answer (as the interventions do,
:func:`~shaping.services.operator.interventions.send_command`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shaping.schemas.commands import EnrolMouse
from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.settings import Settings

DEFAULT_WAIT_S = 20.0


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(choices)}"


def build_enrollment(
    mouse_id: str,
    curriculum: str,
    enrolled_by: str,
    start_stage: str | None = None,
    notes: str = "",
    rig_id: str | None = None,
    requested_at: datetime | None = None,
    known_curricula: Sequence[str] | None = None,
) -> EnrolMouse:
    """The EnrolMouse command, after checking what can be checked here.

    The processor is the judge of curricula and stages: an enrolment it cannot honour is
    refused with an EventRejected on the dead-letter topic. When the caller knows the curricula
    (``known_curricula``), an unknown name is refused here already, with suggestions.

    Raises:
        OperatorError: for an empty mouse id, curriculum or operator name, or a curriculum
            not in ``known_curricula``.
    """
    if not mouse_id.strip():
        raise OperatorError("the mouse id must not be empty")
    if not curriculum.strip():
        raise OperatorError("the curriculum name must not be empty")
    if not enrolled_by.strip():
        raise OperatorError("say who enrols the mouse (--by)")
    if known_curricula is not None and curriculum not in known_curricula:
        names = sorted(known_curricula)
        raise OperatorError(f"unknown curriculum {curriculum!r}; {_suggest(curriculum, names)}")
    return EnrolMouse(
        mouse_id=mouse_id,
        requested_at=requested_at or datetime.now(UTC),
        requested_by=enrolled_by,
        rig_id=rig_id,
        curriculum_name=curriculum,
        start_stage=start_stage,
        notes=notes,
    )


@dataclass(frozen=True)
class Enrolment:
    """A sent enrolment and what the processor answered in time.

    Attributes:
        command: the EnrolMouse as sent.
        where: ``topic[partition]@offset`` of the answering MouseEnrolled on the events topic
            when it came in time, else of the command on the commands topic.
        honoured: whether the MouseEnrolled came in time.
        wait_s: how long the answer was waited for (0: not at all).
    """

    command: EnrolMouse
    where: str
    honoured: bool
    wait_s: float

    def report(self) -> str:
        """What to tell the operator."""
        command = self.command
        if self.honoured:
            return (
                f"enrolled {command.mouse_id} on {command.curriculum_name} "
                f"(event {command.answer_id}, {self.where})"
            )
        waited = f"within {self.wait_s:g} s " if self.wait_s > 0 else ""
        return (
            f"sent the enrolment of {command.mouse_id} on {command.curriculum_name} (command "
            f"{command.command_id}, {self.where}); no answer from the processor {waited}yet: "
            f"`shaping status` shows it"
        )


def request_enrollment(
    settings: Settings, command: EnrolMouse, codec: EventCodec, wait_s: float = DEFAULT_WAIT_S
) -> Enrolment:
    """Sends the enrolment and waits up to ``wait_s`` for the processor's answer.

    Raises:
        OperatorError: no broker answers, the topics do not exist, the write fails, or the
            processor refused the enrolment (its reason in the message).
    """
    from shaping.services.operator.interventions import answered_event

    what = f"the enrolment of {command.mouse_id}"
    where, honoured = answered_event(settings, command, codec, wait_s, what)
    return Enrolment(command, where, honoured, wait_s)
