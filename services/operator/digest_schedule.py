"""The daily digest at the lab's hour: ``shaping digest send --daily-at 07:00``.

A long-running loop that, for each lab of the people file, sends the digest of the lab's
yesterday once the lab's clock (its welfare policy's ``zone``) has passed the hour, and writes
down the day it sent in a small JSON file (``{"lab-a": "2026-03-01", ...}``, replaced whole,
0600). A restart reads the file and sends nothing twice; a day missed while it was stopped is
sent when it starts, if the lab's hour has passed (only yesterday's: a digest of a week ago
helps nobody at 7 am). A day with nothing to send counts as sent. A failure (the database or
the SMTP server away) is logged and tried again later; nothing stops the loop but SIGTERM.

When a send fails part way (one trainer's message taken, the next refused), the lab's digests
are all sent again on the next try: a trainer may get the day's digest twice, never none.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING

from shaping.services.operator.digest import DigestError, Sent, send_digests, trainer_digests
from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from shaping.services.domain.welfare import WelfarePolicy
    from shaping.services.notifier.routing import Routing
    from shaping.services.operator.digest import Lab, People

log = logging.getLogger(__name__)

RETRY_S = 300.0
"""How long after a failed send the lab's digest is tried again."""


def parse_hour(text: str) -> time:
    """``HH:MM`` (24-hour, lab time) as a time.

    Raises:
        DigestError: anything else, in words.
    """
    try:
        hours, minutes = text.split(":")
        if len(hours) > 2 or len(minutes) != 2:
            raise ValueError(text)
        return time(int(hours), int(minutes))
    except ValueError:
        raise DigestError(
            f"--daily-at must be a time like 07:00 (lab time), not {text!r}"
        ) from None


def digest_due(now: datetime, at: time, zone: tzinfo, last_sent: date | None) -> date | None:
    """The lab day whose digest is due at ``now``: yesterday (lab time) once the lab's clock
    has passed ``at`` today, unless that day (or a later one) was sent already; else None."""
    local = now.astimezone(zone)
    if local.time().replace(tzinfo=None) < at:
        return None
    day = local.date() - timedelta(days=1)
    return None if last_sent is not None and last_sent >= day else day


def read_sent(path: Path) -> dict[str, date]:
    """The day each lab's digest was last sent, from ``path`` (empty when there is no file).

    Raises:
        DigestError: the file is there but not such a record (it is never guessed at: delete
            it to send yesterday's digests again).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DigestError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return {str(lab): date.fromisoformat(day) for lab, day in data.items()}
    except (ValueError, TypeError, RecursionError) as exc:  # bad UTF-8 is a ValueError
        raise DigestError(
            f"{path} is not a record of digests sent ({exc}); delete it to send yesterday's "
            "digests again"
        ) from None


def write_sent(path: Path, sent: Mapping[str, date]) -> None:
    """Writes the record whole (a new file renamed over the old: never half written)."""
    fresh = path.with_name(path.name + ".new")
    data = json.dumps({lab: day.isoformat() for lab, day in sorted(sent.items())})
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(data + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(fresh, path)


@dataclass
class DailyDigests:
    """What the loop needs: the tables, the people, each lab's policy, where to send."""

    engine: Engine
    people: People
    policy_for: Callable[[Lab], WelfarePolicy]
    routing: Routing
    at: time
    sent_file: Path
    say: Callable[[str], None] = print

    def run(
        self,
        stop: threading.Event,
        now: Callable[[], datetime],
        check_every_s: float = 30.0,
        retry_s: float = RETRY_S,
    ) -> None:
        """Sends each lab's digest when due (see the module) until ``stop`` is set.

        Raises:
            DigestError: the record of days sent cannot be read (at start).
        """
        sent = read_sent(self.sent_file)
        not_before: dict[str, datetime] = {}
        while not stop.is_set():
            for lab in self.people.labs.values():
                moment = now()
                if lab.name in not_before and moment < not_before[lab.name]:
                    continue
                day = digest_due(moment, self.at, self.policy_for(lab).zone, sent.get(lab.name))
                if day is None:
                    continue
                try:
                    delivered = self.send(lab, day, moment)
                except (DigestError, OperatorError, OSError) as exc:
                    log.error("the digest of %s for %s was not sent: %s", day, lab.name, exc)
                    self.say(
                        f"not sent: the digest of {day} for {lab.name}: {exc}; "
                        f"next try in {retry_s:.0f} s"
                    )
                    not_before[lab.name] = moment + timedelta(seconds=retry_s)
                    continue
                not_before.pop(lab.name, None)
                sent[lab.name] = day
                try:
                    write_sent(self.sent_file, sent)
                except OSError as exc:  # sent all the same; a restart would send it again
                    log.error("cannot write %s: %s", self.sent_file, exc)
                    self.say(f"warning: cannot write {self.sent_file}: {exc.strerror}")
                for item in delivered:
                    self.say(
                        f"sent to {item.trainer} <{item.to}>: {item.subject} ({item.mice} mice)"
                    )
                if not delivered:
                    self.say(f"the digest of {day} for {lab.name}: no trainer has mice that day")
            stop.wait(check_every_s)

    def send(self, lab: Lab, day: date, moment: datetime) -> list[Sent]:
        """Builds and emails the lab's digests of ``day``."""
        digests = trainer_digests(self.engine, day, self.policy_for, self.people, lab.name)
        return send_digests(digests, self.routing, moment)
