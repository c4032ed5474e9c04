"""The welfare export for inspections (issue 15, item 8): each mouse's weights, water,
restrictions, holds, releases, notes and the trainers' manual changes, with who and why, as CSV
files and one printable HTML report (``shaping export --welfare``).

Read from the status tables only (:func:`welfare_records`); rows are sorted by mouse, time and
event id, so the same tables always give the same files. Times are UTC (ISO 8601). A CSV cell of
text that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return) is written with a leading apostrophe; the HTML report escapes every value.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from sqlalchemy import Engine

TEMPLATES = Path(__file__).parent / "templates"

WELFARE_COLUMNS: dict[str, tuple[str, ...]] = {
    "weights": (
        "mouse_id",
        "weighed_at",
        "grams",
        "scale_id",
        "recorded_by",
        "confirmed",
        "event_id",
        "command_id",
    ),
    "water": (
        "mouse_id",
        "given_at",
        "ml",
        "kind",
        "water_type",
        "given_by",
        "session_id",
        "event_id",
        "command_id",
    ),
    "restrictions": (
        "mouse_id",
        "started_at",
        "started_by",
        "reference_grams",
        "reference_method",
        "implant_grams",
        "birth_date",
        "sex",
        "ended_at",
        "ended_by",
        "end_reason",
        "event_id",
        "end_event_id",
    ),
    "holds": (
        "mouse_id",
        "held_at",
        "session_number",
        "reason",
        "status",
        "percent_of_expected",
        "event_id",
        "weight_event_id",
    ),
    "releases": (
        "mouse_id",
        "released_at",
        "released_by",
        "reason",
        "outcome",
        "refused_reason",
        "event_id",
        "command_id",
    ),
    "interventions": (
        "mouse_id",
        "requested_at",
        "kind",
        "requested_by",
        "reason",
        "from_stage",
        "to_stage",
        "adjustments",
        "rig_ids",
        "outcome",
        "refused_reason",
        "event_id",
        "command_id",
    ),
    "notes": ("mouse_id", "noted_at", "noted_by", "text", "event_id"),
}
"""Each file of the welfare export and its columns, in order (documented in docs/husbandry.md)."""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExportError(OperatorError):
    """The export cannot be written as asked."""


@dataclass(frozen=True)
class Written:
    """A file the export wrote and its number of rows (the HTML report: every row)."""

    path: Path
    rows: int


def _outcome(row: Mapping[str, Any]) -> str:
    if row.get("refused_reason"):
        return "refused"
    if row.get("honoured_at") is not None:
        return "honoured"
    return "pending" if not row.get("accepted") else "accepted"


def _json_text(value: str | None) -> str | None:
    if not value:
        return None
    try:
        loaded = json.loads(value)
    except ValueError:
        return value
    if isinstance(loaded, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(loaded.items()))
    if isinstance(loaded, list):
        return ", ".join(str(v) for v in loaded)
    return str(loaded)


def welfare_records(engine: Engine, mouse_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every welfare file's rows (see :data:`WELFARE_COLUMNS`), for every mouse or one.

    Raises:
        OperatorError: the tables cannot be read.
    """
    from sqlalchemy import inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from shaping.services.projector import tables as t

    present = set(inspect(engine).get_table_names())

    def rows(table: Any, order: Sequence[str]) -> list[dict[str, Any]]:
        if table.name not in present:
            return []
        query = select(table)
        if mouse_id is not None:
            query = query.where(table.c.mouse_id == mouse_id)
        query = query.order_by(*(table.c[name] for name in order))
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    try:
        interventions = rows(t.interventions, ("mouse_id", "requested_at", "event_id"))
        records = {
            "weights": rows(t.husbandry_weights, ("mouse_id", "weighed_at", "event_id")),
            "water": rows(t.husbandry_water, ("mouse_id", "given_at", "event_id")),
            "restrictions": rows(t.husbandry_restrictions, ("mouse_id", "started_at", "event_id")),
            "holds": [
                {**r, "weight_event_id": r.get("weight_event_id")}
                for r in rows(t.welfare_holds, ("mouse_id", "held_at", "event_id"))
            ],
            "releases": [
                {
                    **r,
                    "released_at": r["requested_at"],
                    "released_by": r["requested_by"],
                    "outcome": _outcome(r),
                }
                for r in interventions
                if r["kind"] == "release"
            ],
            "interventions": [
                {
                    **r,
                    "adjustments": _json_text(r.get("adjustments_json")),
                    "rig_ids": _json_text(r.get("rig_ids_json")),
                    "outcome": _outcome(r),
                }
                for r in interventions
                if r["kind"] != "release"
            ],
            "notes": rows(t.husbandry_notes, ("mouse_id", "noted_at", "event_id")),
        }
    except SQLAlchemyError as exc:
        raise OperatorError(f"cannot read the status tables: {exc}") from exc
    return {
        name: [{c: row.get(c) for c in WELFARE_COLUMNS[name]} for row in found]
        for name, found in records.items()
    }


def cell(value: Any) -> str:
    """A value as CSV text: times in UTC ISO 8601, booleans as true/false, None empty, and text
    a spreadsheet would run as a formula behind an apostrophe."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def write_csv(records: Mapping[str, list[dict[str, Any]]], out: Path) -> list[Written]:
    """One CSV file per welfare file in ``out`` (created if needed).

    Raises:
        ExportError: the folder or a file cannot be written.
    """
    _folder(out)
    written = []
    for name, columns in WELFARE_COLUMNS.items():
        path = out / f"welfare-{name}.csv"
        found = records.get(name, [])
        try:
            with path.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows([cell(row.get(c)) for c in columns] for row in found)
        except OSError as exc:
            raise ExportError(f"cannot write {path}: {exc.strerror}") from exc
        written.append(Written(path, len(found)))
    return written


def render_report(
    records: Mapping[str, list[dict[str, Any]]], title: str, generated_at: datetime
) -> str:
    """The printable HTML report: per mouse, each file's rows (every value escaped)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = lambda v: "" if v is None else cell(v).lstrip("'")
    mice = sorted({row["mouse_id"] for found in records.values() for row in found})
    by_mouse = {
        mouse: {
            name: [r for r in records.get(name, []) if r["mouse_id"] == mouse]
            for name in WELFARE_COLUMNS
        }
        for mouse in mice
    }
    counts = {name: len(records.get(name, [])) for name in WELFARE_COLUMNS}
    return str(
        env.get_template("welfare.html").render(
            title=title,
            generated_at=generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            columns={name: cols[1:] for name, cols in WELFARE_COLUMNS.items()},
            mice=by_mouse,
            counts=counts,
        )
    )


def write_html(
    records: Mapping[str, list[dict[str, Any]]],
    out: Path,
    generated_at: datetime,
    title: str = "Welfare record",
) -> Written:
    """The HTML report as ``out/welfare.html``.

    Raises:
        ExportError: the folder or the file cannot be written.
    """
    _folder(out)
    path = out / "welfare.html"
    try:
        path.write_text(render_report(records, title, generated_at), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror}") from exc
    return Written(path, sum(len(v) for v in records.values()))


def _folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror}") from exc


__all__ = [
    "WELFARE_COLUMNS",
    "ExportError",
    "Written",
    "cell",
    "render_report",
    "welfare_records",
    "write_csv",
    "write_html",
]
