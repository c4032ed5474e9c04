"""``shaping status`` and ``shaping history`` on narrow terminals: the mouse id is never cut,
the other columns wrap or drop in the documented order, ``--wide`` shows every column, and
counts are whole numbers. Rendered at 80, 100 and 140 columns through typer's CliRunner
(``COLUMNS``), on rich Consoles of those widths, and once on a real 100-column terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from datetime import UTC, datetime
from fcntl import ioctl

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.events import MouseEnrolled, SessionStarted, TrialCompleted
from shaping.services.cli import app
from shaping.services.cli.operator import STATUS_COLUMNS_SHOWN, print_status
from shaping.services.operator.queries import open_database, status_frame
from tests.support.scripts import REPO
from tests.support.wiring import embedded_runtime, sql_store

PLAN = LabPlan(n_mice=3, n_rigs=2, n_days=4, seed=5)
LONG = "SWC-054.cohort-B_2026"  # a long, valid mouse id
NEW = "M010"  # enrolled, no session yet: its counts are missing, the others' stay whole
WIDTHS = (80, 100, 140)
DROP_ORDER = [
    header
    for _, header, drop, _, _ in sorted(
        (c for c in STATUS_COLUMNS_SHOWN if c[2] is not None), key=lambda c: c[2] or 0
    )
]


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 mice trained 4 days, a mouse with a long id, one enrolled only, and M001 in the middle
    of a session (trials, no end yet: its trial count is missing)."""
    path = tmp_path_factory.mktemp("width") / "lab.sqlite"
    store = sql_store(f"sqlite:///{path}")
    try:
        runtime = embedded_runtime(store)
        run_lab(PLAN, runtime)
        at = datetime(2026, 2, 1, 9, tzinfo=UTC)
        runtime.publish(
            [
                MouseEnrolled(
                    mouse_id=mouse, occurred_at=at, curriculum_name="basic-shaping", enrolled_by="t"
                )
                for mouse in (LONG, NEW)
            ]
        )
        assignment = runtime.assignments["M001"]
        runtime.publish(
            [
                SessionStarted(
                    occurred_at=at,
                    stage=assignment.stage,
                    curriculum_name=assignment.curriculum_name,
                    curriculum_version=assignment.curriculum_version,
                    parameters=dict(assignment.parameters),
                    assignment_id=assignment.event_id,
                    mouse_id="M001",
                    rig_id="rig-1",
                    session_id="M001-open",
                ),
                TrialCompleted(
                    occurred_at=at,
                    trial_index=0,
                    outcome="correct",
                    target_side="left",
                    response_side="left",
                    reaction_time_s=0.4,
                    reward_volume_ul=3.0,
                    mouse_id="M001",
                    rig_id="rig-1",
                    session_id="M001-open",
                ),
            ]
        )
    finally:
        store.close()
    return f"sqlite:///{path}"


def invoke(columns: int, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(columns)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def mice() -> list[str]:
    return [mouse for mouse, _ in PLAN.mice()] + [LONG, NEW]


def hidden(out: str) -> list[str]:
    """The columns a table says it left out, in the order it says them."""
    flat = " ".join(out.split())
    match = re.search(r"not shown at \d+ columns: (.+?) \(--wide", flat)
    return match.group(1).split(", ") if match else []


@pytest.mark.parametrize("width", WIDTHS)
def test_status_shows_every_mouse_id_whole_at_any_width(lab_db: str, width: int) -> None:
    out = invoke(width, "status", "--db-url", lab_db)
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), out
    assert "…" not in out
    for mouse in mice():
        [row] = [line for line in lines if re.match(rf"│ {re.escape(mouse)} +│", line)]
        assert row
    # the columns left out are the first ones of the documented order, nothing else
    gone = hidden(out)
    assert gone == DROP_ORDER[: len(gone)]
    for header in ("mouse", "stage"):
        assert header in lines[2] or header in lines[3]
    if width == 140:
        assert gone == []


@pytest.mark.parametrize("width", WIDTHS)
def test_counts_are_whole_numbers(lab_db: str, width: int) -> None:
    out = invoke(width, "status", "--db-url", lab_db)
    [row] = [line for line in out.splitlines() if line.startswith("│ M002 ")]
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    assert f"{PLAN.n_days}" in cells  # sessions done
    assert not re.search(r"\b\d+\.0+\b", " ".join(c for c in cells if not c.startswith("0.")))
    [new_row] = [line for line in out.splitlines() if line.startswith(f"│ {NEW} ")]
    assert "nan" not in new_row.lower()
    history = invoke(width, "history", "M001", "--db-url", lab_db)
    trials = re.findall(r"│ +(\d+(?:\.\d+)?) │ +0\.\d\d │", history)
    assert trials and all("." not in count for count in trials), history


def test_columns_go_in_the_documented_order_on_ever_narrower_consoles(lab_db: str) -> None:
    engine = open_database(lab_db)
    try:
        frame = status_frame(engine)
    finally:
        engine.dispose()
    before: list[str] = []
    for width in range(200, 44, -5):
        buffer = io.StringIO()
        print_status(Console(file=buffer, width=width, highlight=False), frame)
        out = buffer.getvalue()
        assert all(len(line) <= width for line in out.splitlines())
        gone = hidden(out)
        assert gone == DROP_ORDER[: len(gone)], (width, gone)
        assert len(gone) >= len(before)  # narrower never shows more
        before = gone
        for mouse in mice():
            assert f"│ {mouse} " in out, (width, mouse)
    assert before == DROP_ORDER  # at 45 columns only mouse and stage are left


def test_wide_shows_every_column_on_a_narrow_terminal(lab_db: str) -> None:
    out = invoke(80, "status", "--wide", "--db-url", lab_db)
    assert "not shown" not in out
    header = " ".join(out.splitlines()[2].replace("┃", " ").split())
    assert header == " ".join(h for _, h, _, _, _ in STATUS_COLUMNS_SHOWN)
    assert max(len(line) for line in out.splitlines()) > 80
    history = invoke(80, "history", "M002", "--wide", "--db-url", lab_db)
    assert "not shown" not in history and "started" in history and "rig-2" in history


@pytest.mark.parametrize("width", WIDTHS)
def test_history_fits_and_names_the_mouse(lab_db: str, width: int) -> None:
    out = invoke(width, "history", LONG, "--db-url", lab_db)
    assert out.startswith(f"{LONG}: 0 sessions")
    out = invoke(width, "history", "M002", "--db-url", lab_db)
    assert all(len(line) <= width for line in out.splitlines())
    assert "…" not in out
    assert f"M002: {PLAN.n_days} sessions" in out
    gone = hidden(out)
    assert gone == ["rig", "started", "next stage", "trials", "accuracy"][: len(gone)]


def test_the_order_is_documented_in_the_help_and_the_readme() -> None:
    order = ", ".join(DROP_ORDER)
    help_text = " ".join(invoke(200, "status", "--help").split())
    assert f"in this order: {order}" in help_text.replace("│", "").replace("  ", " ")
    assert "--wide" in help_text
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"in this order: {order}" in readme
    history_help = " ".join(invoke(200, "history", "--help").split()).replace("│ ", "")
    assert "rig, started, next stage, trials, accuracy" in history_help
    assert "rig, started, next stage, trials, accuracy" in readme


def test_status_on_a_real_100_column_terminal(lab_db: str) -> None:
    """A pseudo-terminal of 100 columns, no COLUMNS variable: rich asks the terminal."""
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(
        [sys.executable, "-m", "shaping.services.cli", "status", "--db-url", lab_db],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        assert process.wait(timeout=30) == 0
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, out
    for mouse in mice():
        assert f"│ {mouse} " in out, out
    assert "…" not in out
    gone = hidden(out)
    assert gone == DROP_ORDER[: len(gone)]
