"""``shaping demo``: a small simulated lab through the embedded runtime, on SQLite.

With the plan's ``husbandry`` (``shaping demo`` has it on; ``--no-husbandry`` leaves it out) the
lab also simulates weights and water (:mod:`shaping.rig.sim.husbandry`): every mouse on water
restriction, weighed each morning, given the supplements its assignments suggest, and one mouse
that loses weight until it is held, refused by its rig, and released by the simulated trainer
with a reason. The printout then ends with the holds and releases and the digest of the last
day (:mod:`shaping.services.operator.digest`).

The runtime runs the alert rules in process (:func:`shaping.services.alerts.config.default_rules`
unless the caller gives a lab's): the alerts are on the log's alerts topic, in the ``alerts``
table and in the digest, and the printout lists them.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from shaping.rig.sim.lab import LabPlan, LabRun, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.text import printable
from shaping.services.alerts.config import AlertRules, default_rules
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain.welfare import DEFAULT_POLICY
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.operator.digest import Digest, build_digest, render_text
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
    digest: Digest | None = None
    """The digest of the last day (husbandry plans only)."""


def run_demo(out_dir: Path, plan: LabPlan, alerts: AlertRules | None = None) -> DemoResult:
    """Simulates ``plan`` and leaves the SQLite status tables and the event log in ``out_dir``.

    The folder's previous demo files are replaced, so the same seed always gives the same
    database and log.

    Args:
        alerts: the alert rules the runtime runs (None: the built-in ones).
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
        runtime = EmbeddedRuntime(
            store,
            catalog=default_catalog(),
            codec=codec,
            alerts=alerts if alerts is not None else default_rules(welfare=DEFAULT_POLICY),
        )
        run = run_lab(plan, runtime, trainer=runtime.send_commands if plan.husbandry else None)
        runtime.log.save_jsonl(log_path, runtime.codec)
        tables = store.snapshot()
        digest = None
        if plan.husbandry:
            last_day = (plan.start + timedelta(days=plan.n_days - 1)).date()
            digest = build_digest(store.engine, last_day, DEFAULT_POLICY)
    finally:
        store.close()
    return DemoResult(out_dir, db_path, log_path, len(runtime.log), run, tables, digest)


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
        *_alert_lines(result),
        *_husbandry_lines(result),
        f"Output folder: {result.out_dir}",
        f"  status tables (SQLite): {result.db_path}",
        f"  event log (JSON Lines): {result.log_path}",
    ]
    return "\n".join(lines)


def _alert_lines(result: DemoResult) -> list[str]:
    """The alerts the rules raised (the ``alerts`` table: each alert's newest episode)."""
    rows = sorted(
        result.tables.get("alerts", []),
        key=lambda r: (str(r["raised_at"]), r["rule"], r["scope_key"]),
    )
    still_open = sum(1 for r in rows if r["resolved_at"] is None)
    episodes = sum(int(r["episode"]) for r in rows)
    lines = [
        f"Alerts: {len(rows)} alerts raised {episodes} times, {still_open} open now "
        "(each alert's newest episode below)"
    ]
    for row in rows:
        state = "open" if row["resolved_at"] is None else f"resolved {row['resolved_at'][:16]}"
        lines.append(
            f"  {row['raised_at'][:16]}  {row['severity']:<9} {row['rule']:<15} "
            f"{row['scope']} {row['scope_key']}  [{state}]  {printable(row['message'])}"
        )
    return [*lines, ""]


def _husbandry_lines(result: DemoResult) -> list[str]:
    """The holds, refusals and releases of a husbandry plan, then the last day's digest."""
    run = result.run
    if not run.plan.husbandry:
        return []
    tables = result.tables
    start = run.plan.start.date()
    lines = [
        "Husbandry (simulated trainer: weighed every morning, supplements after sessions)",
        f"  weights {len(tables['husbandry_weights'])}, water entries "
        f"{len(tables['husbandry_water'])}, restrictions "
        f"{len(tables['husbandry_restrictions'])}",
    ]
    happened = [
        (held.day, 0, held.mouse_id, f"{held.rig_id} refused {held.mouse_id}: {held.message}")
        for held in run.held
    ] + [
        (release.day, 1, release.mouse_id, f"{release.mouse_id} released: {release.reason}")
        for release in run.releases
    ]
    for day, _, _, text in sorted(happened):
        lines.append(f"  {(start + timedelta(days=day)).isoformat()} {printable(text)}")
    if not run.held:
        lines.append("  no mouse was held")
    lines.append("")
    if result.digest is not None:
        lines += [render_text(result.digest).rstrip("\n"), ""]
    return lines


def clean(out_dir: Path) -> None:
    """Removes a demo output folder."""
    shutil.rmtree(out_dir, ignore_errors=True)
