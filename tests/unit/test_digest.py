"""The daily digest (issue 15, item 4) over a small embedded lab whose numbers are checked by hand,
its HTML escaping, the people file, ``shaping digest`` and ``shaping digest send`` to a real
local SMTP server (aiosmtpd)."""

from __future__ import annotations

from email.message import Message
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.services.cli import app
from shaping.services.domain.welfare import DEFAULT_POLICY
from shaping.services.operator.digest import (
    NO_ALERTS_TABLE,
    Digest,
    DigestError,
    build_digest,
    open_alerts,
    parse_people,
    render_html,
    render_text,
    summarize_evidence,
)
from shaping.services.operator.queries import open_database
from tests.support.digest_lab import DAY, HOSTILE, mail_files, small_lab_url
from tests.support.receivers import Mailbox
from tests.support.wiring import sql_store


@pytest.fixture
def lab_url(tmp_path: Path) -> str:
    return small_lab_url(tmp_path)


def digest_of(url: str, **kwargs: object) -> Digest:
    engine = open_database(url)
    try:
        return build_digest(engine, DAY, DEFAULT_POLICY, **kwargs)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_the_digest_numbers_by_hand(lab_url: str) -> None:
    digest = digest_of(lab_url)
    assert [m.mouse_id for m in digest.mice] == ["M1", "M2", "M3"]
    m1, m2, m3 = digest.mice
    # M1: 120 trials, 90 correct; 24.0 g of a 25.0 g reference is 96 %; the requirement is
    # max(1.0 mL, 0.04 mL/g x 24.0 g = 0.96 mL) = 1.0 mL, 0.4 mL given, 0.6 mL still due.
    assert (len(m1.sessions), m1.trials, m1.accuracy) == (1, 120, 0.75)
    w = m1.welfare
    assert (w.latest_grams, w.expected_grams, w.percent, w.status) == (24.0, 25.0, 96.0, "ok")
    assert (w.given_ml, w.requirement_ml, w.still_required_ml) == (0.4, 1.0, 0.6)
    [decision] = m1.decisions
    assert (decision.session_total, decision.decision, decision.to_stage) == (
        1,
        "progress",
        "s2_training",
    )
    assert decision.why == (
        "engaged_and_accurate: accuracy(window=200) 0.75 >= 0.65, session_trials 120 >= 100"
    )
    assert (m1.stage, m1.next.stage, m1.next.session_number) == ("s2_training",) * 2 + (2,)
    assert m1.next.held is None and m1.next.restricted
    # M2: not restricted, 100 trials at 50 %: stays; then bob overrode it.
    assert (m2.trials, m2.accuracy, m2.welfare.status) == (100, 0.5, "unrestricted")
    assert m2.decisions[0].decision == "stay"
    assert m2.decisions[0].why == "engaged_and_accurate not met (accuracy(window=200) 0.5 >= 0.65)"
    assert [(a.what, a.by) for a in m2.actions] == [
        ("note", "ada"),
        ("stage overridden to s2_training", "bob"),
    ]
    # M3: 19.0 g is 76 % of 25 g, at or below the 80 % minimum: held, requirement 0.05 mL/g.
    assert (m3.welfare.percent, m3.welfare.status) == (76.0, "warning")
    assert m3.welfare.requirement_ml == 1.0  # max(1.0, 0.05 x 19.0 = 0.95)
    assert m3.next.held is not None and "19 g is 76.0 %" in m3.next.held
    assert [m.mouse_id for m in digest.attention] == ["M1", "M3"]  # water due; held
    assert digest.alerts_note is None  # the tables hold an alerts table (empty here)
    assert all(m.alerts == () for m in digest.mice)


def test_the_digest_as_text(lab_url: str) -> None:
    text = render_text(digest_of(lab_url))
    assert text.startswith("Shaping digest of 2026-02-02, lab (welfare policy default)\n")
    assert "3 mice; attention first: M1, M3 (HELD)." in text
    assert "  sessions: 1, 120 trials, accuracy 75%\n" in text
    assert "  weight: 24.0 g (2026-02-02 08:00), 96.0 % of expected 25.0 g: ok\n" in text
    assert "  water: 0.40 mL (supplement 0.40); required 1.00 mL, still due 0.60 mL\n" in text
    assert "    after session 1: progress s1_habituation -> s2_training; why: " in text
    assert "  next: session 2, stage s2_training; weigh it before its next session" in text
    assert (
        "  next: session 1, stage s1_habituation; HELD: 19 g is 76.0 % of expected 25.0 g "
        "(minimum 80 %), at or below the minimum\n"
    ) in text
    assert "  weight: not on water restriction\n" in text
    # control characters of the data are shown, never sent to the terminal
    assert "\x1b" not in text and "\\x1b[31m" in text
    assert "  open alerts: none\n" in text and NO_ALERTS_TABLE not in text


def test_the_digest_as_html_escapes_hostile_text(lab_url: str) -> None:
    page = render_html(digest_of(lab_url))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert '<td class="num">96.0</td>' in page
    assert 'class="held"' in page


def test_hostile_lab_and_trainer_names_are_escaped(lab_url: str) -> None:
    people = parse_people(
        "labs:\n  lab-a: {mice: ['M*']}\n"
        "trainers:\n  '<b>eve</b>': {labs: [lab-a]}\n  bob: {mice: [M2]}\n"
    )
    eve = digest_of(lab_url, people=people, lab="lab-a", trainer="<b>eve</b>")
    assert [m.mouse_id for m in eve.mice] == ["M1", "M2", "M3"]
    page = render_html(eve)
    assert "<b>eve</b>" not in page and "&lt;b&gt;eve&lt;/b&gt;" in page
    bob = digest_of(lab_url, people=people, lab="lab-a", trainer="bob")
    assert [m.mouse_id for m in bob.mice] == ["M2"]


def test_a_bad_people_file_is_refused_with_its_line() -> None:
    with pytest.raises(DigestError) as refused:
        parse_people("labs:\n  lab-a: {mice: [M1]}\ntrainers:\n  ada: {labs: [lab-b]}\n", "p.yaml")
    assert "p.yaml:4" in str(refused.value) and "unknown lab 'lab-b'" in str(refused.value)
    with pytest.raises(DigestError, match="unknown key 'mouse'"):
        parse_people("labs:\n  lab-a: {mouse: [M1]}\n")
    with pytest.raises(DigestError, match="no trainer 'zed'"):
        parse_people("labs: {lab-a: {}}\ntrainers: {ada: {labs: [lab-a]}}\n").trainer("zed")


def test_the_evidence_in_one_line() -> None:
    assert summarize_evidence("[]", "stay") == "no rule applies at this stage"
    assert summarize_evidence("not json", "stay") == "evidence unreadable"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_shaping_digest_prints_and_writes_html(lab_url: str, tmp_path: Path) -> None:
    page = tmp_path / "digest.html"
    code, out = _cli("digest", "--day", "2026-02-02", "--db-url", lab_url, "--html", str(page))
    assert code == 0, out
    assert out == render_text(digest_of(lab_url))
    assert page.read_text(encoding="utf-8") == render_html(digest_of(lab_url))
    people = tmp_path / "people.yaml"
    people.write_text("labs: {lab-a: {mice: ['M*']}}\ntrainers: {bob: {mice: [M2]}}\n")
    code, out = _cli(
        "digest", "--day", "2026-02-02", "--db-url", lab_url, "--people", str(people),
        "--trainer", "bob",
    )  # fmt: skip
    assert code == 0, out
    assert "for bob" in out and "M2:" in out and "M1:" not in out
    code, out = _cli("digest", "--db-url", lab_url, "--people", str(people), "--trainer", "al")
    assert code == 2 and "no trainer 'al'" in out
    code, out = _cli("digest", "--db-url", lab_url, "--day", "02/02/2026")
    assert code == 2 and "--day must be a date" in out


def test_digest_send_emails_one_message_per_trainer(
    lab_url: str, tmp_path: Path, smtp_server: tuple[int, Mailbox]
) -> None:
    port, mailbox = smtp_server
    routing, people = mail_files(tmp_path, port)
    args = ["--routing", str(routing), "--people", str(people), "--db-url", lab_url]
    code, out = _cli("digest", "send", "--day", "2026-02-02", *args)
    assert code == 0, out
    assert "sent to ada <ada@lab.test>: Shaping digest of 2026-02-02, lab-a for ada (3 mice)" in out
    assert "sent to bob <bob@lab.test>" in out and "(1 mice)" in out
    received = sorted(mailbox.messages, key=lambda m: str(m["To"]))
    assert [str(m["To"]) for m in received] == ["ada@lab.test", "bob@lab.test"]

    def parts(message: Message) -> dict[str, str]:
        return {
            part.get_content_type(): part.get_payload(decode=True).decode()  # type: ignore[union-attr]
            for part in message.walk()
            if not part.is_multipart()
        }

    ada = parts(received[0])
    assert set(ada) == {"text/plain", "text/html"}
    assert "  sessions: 1, 120 trials, accuracy 75%" in ada["text/plain"]
    assert "<script>" not in ada["text/html"] and "&lt;script&gt;" in ada["text/html"]
    assert "M1:" not in parts(received[1])["text/plain"]
    # a trainer the routing file cannot reach: nothing is sent
    people.write_text("labs: {lab-a: {mice: ['M*']}}\ntrainers:\n  zoe: {labs: [lab-a]}\n")
    code, out = _cli("digest", "send", "--day", "2026-02-02", *args)
    assert code == 1 and "no email address in the routing file for zoe" in out
    assert len(mailbox.messages) == 2


def test_open_alerts_in_the_tables_are_shown_per_mouse(lab_url: str) -> None:
    """The projector's ``alerts`` table (alerts topic): each mouse's open alerts are in its
    digest, a resolved one is not; tables without the table say where to look instead."""
    from sqlalchemy import text

    from tests.support.alert_events import alert_message

    store = sql_store(lab_url)
    try:
        store.apply_batch(
            "test",
            [
                alert_message("AlertRaised", "M3", 0, "critical", f"M3 at 76 % {HOSTILE}"),
                alert_message("AlertRaised", "M1", 1, "attention", "M1 near its minimum"),
                alert_message("AlertResolved", "M1", 2, "attention", "weighed", revision=1),
                alert_message("AlertRaised", "rig-1", 3, "warning", "rig-1 silent", scope="rig"),
            ],
        )
    finally:
        store.close()
    digest = digest_of(lab_url)
    assert digest.alerts_note is None
    m1, _, m3 = digest.mice
    assert m1.alerts == () and [(a.severity, a.rule) for a in m3.alerts] == [("critical", "weight")]
    assert [m.mouse_id for m in digest.attention] == ["M1", "M3"]
    text_out = render_text(digest)
    assert "  open alerts:\n    CRITICAL weight: M3 at 76 % <script>" in text_out
    assert "  open alerts: none\n" in text_out and NO_ALERTS_TABLE not in text_out
    assert "&lt;script&gt;" in render_html(digest)
    engine = open_database(lab_url)
    try:
        found = open_alerts(engine)
        assert found is not None and sorted(found) == ["M3", "rig:rig-1"]
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE alerts"))
        assert open_alerts(engine) is None
    finally:
        engine.dispose()
    assert digest_of(lab_url).alerts_note == NO_ALERTS_TABLE
