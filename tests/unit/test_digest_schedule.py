"""The daily digest at the lab's hour (``shaping digest send --daily-at``): when a day is due,
the record of days sent, the loop against a real local SMTP server (aiosmtpd) with a clock we
move, a restart that sends nothing twice, a server away that is tried again, and the command
as a process stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from shaping.services.domain.welfare import DEFAULT_POLICY
from shaping.services.notifier.routing import load_routing
from shaping.services.operator.digest import DigestError, load_people
from shaping.services.operator.digest_schedule import (
    DailyDigests,
    digest_due,
    parse_hour,
    read_sent,
    write_sent,
)
from shaping.services.operator.queries import open_database
from tests.support.digest_lab import DAY, mail_files, small_lab_url
from tests.support.ops import free_ports
from tests.support.processes import wait_until
from tests.support.receivers import Mailbox
from tests.support.scripts import REPO

SEVEN = time(7, 0)
LISBON = ZoneInfo("Europe/Lisbon")


def test_a_digest_is_due_once_the_labs_clock_passes_the_hour() -> None:
    before = datetime(2026, 2, 3, 6, 59, tzinfo=UTC)
    assert digest_due(before, SEVEN, UTC, None) is None
    assert digest_due(before + timedelta(minutes=1), SEVEN, UTC, None) == date(2026, 2, 2)
    # sent already (or a later day was): nothing; the day after at 7: the next day
    assert digest_due(before + timedelta(hours=3), SEVEN, UTC, date(2026, 2, 2)) is None
    assert digest_due(before + timedelta(days=1, minutes=1), SEVEN, UTC, date(2026, 2, 2)) == (
        date(2026, 2, 3)
    )
    # the lab's zone: 06:30 UTC in summer is 07:30 in Lisbon
    summer = datetime(2026, 7, 1, 6, 30, tzinfo=UTC)
    assert digest_due(summer, SEVEN, UTC, None) is None
    assert digest_due(summer, SEVEN, LISBON, None) == date(2026, 6, 30)
    # just after midnight, lab time, yesterday is the day before
    assert digest_due(datetime(2026, 2, 3, 0, 5, tzinfo=UTC), time(0, 0), UTC, None) == DAY


@pytest.mark.parametrize("text", ["7", "07:0", "25:00", "07:60", "seven", "07:00:00", ""])
def test_an_hour_that_is_not_hh_mm_is_refused_in_words(text: str) -> None:
    with pytest.raises(DigestError, match="--daily-at must be a time like 07:00"):
        parse_hour(text)


def test_the_record_of_days_sent_is_written_whole_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sent.json"
    assert read_sent(path) == {}
    write_sent(path, {"lab-b": date(2026, 2, 2), "lab-a": date(2026, 2, 1)})
    assert read_sent(path) == {"lab-a": date(2026, 2, 1), "lab-b": date(2026, 2, 2)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["sent.json"]
    for bad in (
        b"",
        b"[]",
        b'{"lab-a": "yesterday"}',
        b"{not json",
        b"\x00\xff\xfe{",
        b"[" * 10**6,
    ):
        path.write_bytes(bad)
        with pytest.raises(DigestError, match="is not a record of digests sent"):
            read_sent(path)


@pytest.fixture
def lab_url(tmp_path: Path) -> str:
    return small_lab_url(tmp_path)


class Clock:
    """A clock the test moves."""

    def __init__(self, start: datetime) -> None:
        self.value = start

    def __call__(self) -> datetime:
        return self.value


def at_seven(
    engine: Engine, routing: Path, people: Path, sent_file: Path, said: list[str]
) -> DailyDigests:
    """The lab's digests every day at 07:00 (UTC, the default policy), what it says kept."""
    return DailyDigests(
        engine,
        load_people(people),
        lambda lab: DEFAULT_POLICY,
        load_routing(routing),
        SEVEN,
        sent_file,
        said.append,
    )


def running(daily: DailyDigests, clock: Clock, retry_s: float = 3600.0) -> tuple[
    threading.Event, threading.Thread
]:  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(
        target=daily.run, args=(stop, clock), kwargs={"check_every_s": 0.02, "retry_s": retry_s}
    )
    thread.start()
    return stop, thread


def test_the_loop_sends_at_the_hour_once_and_a_restart_sends_nothing_twice(
    lab_url: str, tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    routing, people = mail_files(tmp_path, port)
    sent_file = tmp_path / "sent.json"
    said: list[str] = []
    engine = open_database(lab_url)

    clock = Clock(datetime(2026, 2, 3, 6, 58, tzinfo=UTC))
    stop, thread = running(at_seven(engine, routing, people, sent_file, said), clock)
    try:
        threading.Event().wait(0.3)
        assert mailbox.messages == [] and not sent_file.exists()  # not 7 yet
        clock.value = datetime(2026, 2, 3, 7, 0, 5, tzinfo=UTC)
        wait_until(lambda: len(mailbox.messages) == 2, 10, "the two digests of 2026-02-02")
        threading.Event().wait(0.3)  # the loop goes on looking, and sends nothing more
    finally:
        stop.set()
        thread.join(10)
    assert sorted(str(m["To"]) for m in mailbox.messages) == ["ada@lab.test", "bob@lab.test"]
    assert all("2026-02-02" in str(m["Subject"]) for m in mailbox.messages)
    assert json.loads(sent_file.read_text()) == {"lab-a": "2026-02-02"}
    assert any(line.startswith("sent to ada <ada@lab.test>") for line in said)

    # Restarted later the same day: it reads the record and sends nothing.
    clock.value = datetime(2026, 2, 3, 9, 0, tzinfo=UTC)
    stop, thread = running(at_seven(engine, routing, people, sent_file, said), clock)
    threading.Event().wait(0.3)
    stop.set()
    thread.join(10)
    assert len(mailbox.messages) == 2
    engine.dispose()


def test_a_server_away_is_tried_again_and_nothing_is_recorded_until_it_is_sent(
    lab_url: str, tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    (closed,) = free_ports(1)
    routing, people = mail_files(tmp_path, closed)  # nobody listens there
    sent_file = tmp_path / "sent.json"
    said: list[str] = []
    engine = open_database(lab_url)
    daily = at_seven(engine, routing, people, sent_file, said)
    clock = Clock(datetime(2026, 2, 3, 7, 30, tzinfo=UTC))
    stop, thread = running(daily, clock, retry_s=60)
    try:
        wait_until(lambda: any(s.startswith("not sent") for s in said), 10, "the failure said")
        threading.Event().wait(0.3)
        assert sum(s.startswith("not sent") for s in said) == 1  # not again before the retry
        assert not sent_file.exists()
        daily.routing = load_routing(mail_files(tmp_path, port)[0])  # the server is back
        clock.value += timedelta(seconds=61)
        wait_until(lambda: len(mailbox.messages) == 2, 10, "the digests, on the next try")
    finally:
        stop.set()
        thread.join(10)
    assert "next try in 60 s" in said[0]
    assert json.loads(sent_file.read_text()) == {"lab-a": "2026-02-02"}
    engine.dispose()


def _command(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shaping.services.cli", "digest", "send", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_command_runs_as_a_service_until_sigterm(
    lab_url: str, tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    routing, people = mail_files(tmp_path, port)
    sent_file = tmp_path / "sent.json"
    args = ["--routing", str(routing), "--people", str(people), "--db-url", lab_url]
    env = {"SHAPING_DIGEST_CHECK_S": "0.1"}
    # Past midnight, yesterday is due at once.
    service = _command(*args, "--daily-at", "00:00", "--sent-file", str(sent_file), env=env)
    try:
        wait_until(sent_file.exists, 30, "the record of the day sent")
    finally:
        service.send_signal(signal.SIGTERM)
        out, _ = service.communicate(timeout=30)
    assert service.returncode == 0, out
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert json.loads(sent_file.read_text()) == {"lab-a": yesterday}
    assert "daily at 00:00 lab time" in out
    assert f"sent to ada <ada@lab.test>: Shaping digest of {yesterday}, lab-a for ada" in out
    assert sorted(str(m["To"]) for m in mailbox.messages) == ["ada@lab.test", "bob@lab.test"]
    for bad, said in (
        (["--daily-at", "7am"], "--daily-at must be a time like 07:00"),
        (["--daily-at", "07:00", "--day", "2026-02-02"], "do not go together"),
    ):
        refused = _command(*args, *bad, env=env)
        out, _ = refused.communicate(timeout=30)
        assert refused.returncode == 2 and said in out, out
    sent_file.write_text("{broken")
    refused = _command(*args, "--daily-at", "07:00", "--sent-file", str(sent_file), env=env)
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "is not a record of digests sent" in out, out
