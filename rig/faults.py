"""Faults a rig process injects into itself on purpose, for crash tests.

A :class:`FaultPlan` says where a process should die (SIGKILL, so nothing gets to clean up) or
hold still. The rig's code never reads it from the environment: the command line parses
``--fault-plan TEXT`` (hidden, see docs/rig.md, "Testing hooks") and hands the plan to
:class:`~shaping.rig.agent.RigAgent` and :class:`~shaping.rig.link.drain.OutboxDrainer`, which call
it at the two points a crash matters:

- :meth:`FaultPlan.after_store`, right after the N-th event went into the outbox;
- :meth:`FaultPlan.after_ack`, right after the broker acknowledged the N-th event and before
  the outbox marks it sent.

The text form is what the ``SHAPING_RIG_FAULT`` variable of earlier releases held: entries
``name:N[:rest]`` separated by commas, among

``kill-after-event:N``
    SIGKILL right after the N-th event stored.
``pause-after-event:N:PATH``
    after the N-th event stored, create ``PATH.reached`` and wait until ``PATH`` exists (the
    test does what it needs, say cut the broker, then creates ``PATH``).
``kill-after-ack:N``
    SIGKILL after the N-th broker acknowledgement, before that event is marked sent.

N counts from 1, from the start of the process's agent or drainer.
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KILL_AFTER_EVENT = "kill-after-event"
PAUSE_AFTER_EVENT = "pause-after-event"
KILL_AFTER_ACK = "kill-after-ack"
FAULT_NAMES = (KILL_AFTER_EVENT, PAUSE_AFTER_EVENT, KILL_AFTER_ACK)
"""Every fault a plan knows, by its name in the text form."""

PAUSE_POLL_S = 0.05
"""How often a paused process looks for its gate file."""


class FaultPlanError(ValueError):
    """A fault plan that cannot be followed: an unknown fault, a bad count, a missing path."""


@dataclass(frozen=True)
class FaultPlan:
    """Where a rig process kills itself or pauses (all None: nowhere).

    Attributes:
        kill_after_event: SIGKILL once this many events were stored.
        pause_after_event: pause once this many events were stored...
        pause_gate: ...until this file exists (``<pause_gate>.reached`` says the pause began).
        kill_after_ack: SIGKILL once the broker acknowledged this many events, before the
            last of them is marked sent.
    """

    kill_after_event: int | None = None
    pause_after_event: int | None = None
    pause_gate: Path | None = None
    kill_after_ack: int | None = None

    def __post_init__(self) -> None:
        for name, count in (
            (KILL_AFTER_EVENT, self.kill_after_event),
            (PAUSE_AFTER_EVENT, self.pause_after_event),
            (KILL_AFTER_ACK, self.kill_after_ack),
        ):
            if count is not None and (isinstance(count, bool) or count < 1):
                raise FaultPlanError(f"{name} needs a count of at least 1, not {count!r}")
        if (self.pause_after_event is None) != (self.pause_gate is None):
            raise FaultPlanError(f"{PAUSE_AFTER_EVENT} needs its count and its gate file together")

    # -- building -----------------------------------------------------------------------------

    @classmethod
    def none(cls) -> FaultPlan:
        """The plan of every ordinary run: no faults."""
        return cls()

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Reads the text form (``kill-after-event:60,kill-after-ack:25``; blank: no faults).

        Raises:
            FaultPlanError: an unknown fault name, a count that is not a whole number of at
                least 1, a pause without its gate file, a fault given twice, an empty entry.
        """
        if not text.strip():
            return cls.none()
        found: dict[str, tuple[int, str]] = {}
        for entry in text.split(","):
            entry = entry.strip()
            if not entry:
                raise FaultPlanError(f"an empty entry in the fault plan {text!r}")
            name, count, rest = _split(entry)
            if name in found:
                raise FaultPlanError(f"{name} is given twice in the fault plan {text!r}")
            found[name] = (count, rest)
        kill_event = found.get(KILL_AFTER_EVENT)
        pause = found.get(PAUSE_AFTER_EVENT)
        kill_ack = found.get(KILL_AFTER_ACK)
        return cls(
            kill_after_event=kill_event[0] if kill_event else None,
            pause_after_event=pause[0] if pause else None,
            pause_gate=Path(pause[1]) if pause else None,
            kill_after_ack=kill_ack[0] if kill_ack else None,
        )

    def __str__(self) -> str:
        """The text form, which :meth:`parse` reads back to an equal plan."""
        entries = []
        if self.kill_after_event is not None:
            entries.append(f"{KILL_AFTER_EVENT}:{self.kill_after_event}")
        if self.pause_after_event is not None:
            entries.append(f"{PAUSE_AFTER_EVENT}:{self.pause_after_event}:{self.pause_gate}")
        if self.kill_after_ack is not None:
            entries.append(f"{KILL_AFTER_ACK}:{self.kill_after_ack}")
        return ",".join(entries)

    @property
    def is_empty(self) -> bool:
        """Whether the plan injects nothing."""
        return self == FaultPlan.none()

    @property
    def pause_reached(self) -> Path | None:
        """The file a pause creates when it begins (None: the plan does not pause)."""
        return None if self.pause_gate is None else Path(f"{self.pause_gate}.reached")

    # -- the fault points ---------------------------------------------------------------------

    def after_store(self, count: int) -> None:
        """Called right after the ``count``-th event went into the outbox: pauses or kills
        the process there if the plan says so (otherwise returns at once)."""
        if count == self.pause_after_event:
            self._pause(count)
        if self.kill_after_event is not None and count >= self.kill_after_event:
            _kill(f"after stored event {count}")

    def after_ack(self, count: int) -> None:
        """Called after the broker's ``count``-th acknowledgement, before the event is marked
        sent: kills the process there if the plan says so."""
        if self.kill_after_ack is not None and count >= self.kill_after_ack:
            _kill(f"after broker acknowledgement {count}, before marking it sent")

    def _pause(self, count: int) -> None:
        gate, reached = self.pause_gate, self.pause_reached
        assert gate is not None and reached is not None  # __post_init__: both or neither
        log.warning("fault plan: pausing after stored event %d until %s exists", count, gate)
        reached.touch()
        while not gate.exists():
            time.sleep(PAUSE_POLL_S)
        log.warning("fault plan: %s exists, going on after event %d", gate, count)


def _split(entry: str) -> tuple[str, int, str]:
    """One entry of the text form as its name, its count and the rest (checked)."""
    name, *parts = entry.split(":", 2)
    if name not in FAULT_NAMES:
        close = difflib.get_close_matches(name, FAULT_NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FaultPlanError(f"unknown fault {name!r}{hint}; known: {', '.join(FAULT_NAMES)}")
    usage = f"{name}:N:PATH" if name == PAUSE_AFTER_EVENT else f"{name}:N"
    if not parts:
        raise FaultPlanError(f"{entry!r} needs a count: {usage}")
    number = parts[0]
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise FaultPlanError(f"{entry!r} needs a count of at least 1, not {number!r}: {usage}")
    rest = parts[1] if len(parts) > 1 else None
    if name == PAUSE_AFTER_EVENT:
        if not rest:
            raise FaultPlanError(f"{entry!r} needs the path of its gate file: {usage}")
    elif rest is not None:
        raise FaultPlanError(f"{entry!r} takes only a count: {usage}")
    return name, int(number), rest or ""


def _kill(where: str) -> None:
    """SIGKILLs this process: no handler runs and nothing is cleaned up, as in a power cut."""
    log.warning("fault plan: killing this process %s", where)
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_NAMES", "FaultPlan", "FaultPlanError"]
