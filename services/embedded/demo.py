"""``shaping demo``: a small simulated lab through the embedded runtime, on SQLite."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shaping.rig.sim.lab import LabPlan, LabRun, run_lab
from shaping.schemas.codec import default_codec
from shaping.services.curricula.catalog import default_catalog
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.projector.store import SqlProjectionStore

DB_NAME = "shaping.sqlite"
LOG_NAME = "events.jsonl"


@dataclass
class DemoResult:
    """Where the demo left its files, and what the status tables hold."""

    out_dir: Path
    db_path: Path
    log_path: Path
    n_messages: int
    run: LabRun
    tables: dict[str, list[dict[str, Any]]]


def run_demo(out_dir: Path, plan: LabPlan) -> DemoResult:
    """Simulates ``plan`` and leaves the SQLite status tables and the event log in ``out_dir``.

    The folder's previous demo files are replaced, so the same seed always gives the same
    database and log.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    db_path = out_dir / DB_NAME
    log_path = out_dir / LOG_NAME
    for old in (db_path, log_path):
        if old.exists():
            old.unlink()
    codec = default_codec()
    store = SqlProjectionStore(f"sqlite:///{db_path}", codec=codec)
    try:
        runtime = EmbeddedRuntime(store, catalog=default_catalog(), codec=codec)
        run = run_lab(plan, runtime)
        runtime.log.save_jsonl(log_path, runtime.codec)
        tables = store.snapshot()
    finally:
        store.close()
    return DemoResult(out_dir, db_path, log_path, len(runtime.log), run, tables)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [line.rstrip() for line in lines]


def render_report(result: DemoResult) -> str:
    """The demo's printout: the status table and each mouse's stage path."""
    plan = result.run.plan
    tables = result.tables
    rig_of = dict(plan.mice())
    last_accuracy: dict[str, float | None] = {}
    for row in sorted(tables["session_summaries"], key=lambda r: str(r["started_at"])):
        last_accuracy[row["mouse_id"]] = row["accuracy"]
    status_rows = []
    for row in tables["mouse_status"]:
        accuracy = last_accuracy.get(row["mouse_id"])
        status_rows.append(
            (
                row["mouse_id"],
                rig_of.get(row["mouse_id"], "?"),
                row["stage"],
                row["sessions_at_stage"],
                row["sessions_completed"],
                row["last_decision"],
                f"{accuracy:.0%}" if isinstance(accuracy, float) else "-",
            )
        )
    paths: dict[str, list[str]] = defaultdict(list)
    for row in sorted(
        tables["stage_history"], key=lambda r: (r["mouse_id"], r["entered_at_session"])
    ):
        step = row["stage"]
        if row["entered_at_session"]:
            step += f" (after session {row['entered_at_session']}, {row['decision']})"
        paths[row["mouse_id"]].append(step)
    decisions: dict[str, int] = defaultdict(int)
    for row in tables["decision_log"]:
        decisions[row["decision"]] += 1
    lines = [
        f"Shaping demo: {plan.n_mice} mice, {plan.n_rigs} rigs, {plan.n_days} days, "
        f"seed {plan.seed}, curriculum {plan.curriculum}",
        "",
        "Status",
        *_table(
            ("mouse", "rig", "stage", "at stage", "sessions", "last decision", "last accuracy"),
            status_rows,
        ),
        "",
        "Stage paths",
        *(f"{mouse}: " + " -> ".join(steps) for mouse, steps in sorted(paths.items())),
        "",
        "Decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())),
        f"Sessions: {len(tables['session_summaries'])}; events on the log: {result.n_messages}",
        "",
        f"Output folder: {result.out_dir}",
        f"  status tables (SQLite): {result.db_path}",
        f"  event log (JSON Lines): {result.log_path}",
    ]
    return "\n".join(lines)


def clean(out_dir: Path) -> None:
    """Removes a demo output folder."""
    shutil.rmtree(out_dir, ignore_errors=True)
