"""``shaping export --welfare`` (issue 15, item 8): each mouse's weights, water, restrictions,
holds, releases, notes and manual changes with who and why, as CSV files and one HTML report."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.schemas.commands import ReleaseHold
from shaping.services.cli import app
from shaping.services.operator.export import WELFARE_COLUMNS, cell
from tests.support.digest_lab import HOSTILE, ask, small_lab
from tests.support.wiring import embedded_runtime, sql_store


@pytest.fixture
def lab_url(tmp_path: Path) -> str:
    """The digest's small lab, with M3 released by ada after its hold."""
    url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store)
    small_lab(runtime)
    runtime.send_commands([ask(ReleaseHold, "M3", 14, reason="vet checked: =fine")])
    store.close()
    return url


def read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def test_the_welfare_files_columns_and_rows(lab_url: str, tmp_path: Path) -> None:
    out = tmp_path / "inspection"
    result = CliRunner().invoke(
        app, ["export", "--welfare", "--out", str(out), "--db-url", lab_url]
    )
    assert result.exit_code == 0, result.output
    files = {name: read(out / f"welfare-{name}.csv") for name in WELFARE_COLUMNS}
    for name, (columns, _) in files.items():
        assert columns == list(WELFARE_COLUMNS[name]), name
    rows = {name: found for name, (_, found) in files.items()}
    assert [(r["mouse_id"], r["grams"], r["recorded_by"]) for r in rows["weights"]] == [
        ("M1", "24", "ada"),
        ("M3", "19", "ada"),
    ]
    assert rows["weights"][0]["weighed_at"] == "2026-02-02T08:00:00+00:00"
    assert [(r["mouse_id"], r["ml"], r["kind"], r["given_by"]) for r in rows["water"]] == [
        ("M1", "0.4", "supplement", "ada")
    ]
    assert [
        (r["mouse_id"], r["reference_grams"], r["started_by"]) for r in rows["restrictions"]
    ] == [
        ("M1", "25", "ada"),
        ("M3", "25", "ada"),
    ]
    [hold] = rows["holds"]
    assert hold["mouse_id"] == "M3" and hold["status"] == "warning"
    assert hold["reason"].startswith("19 g is 76.0 % of expected 25.0 g (minimum 80 %)")
    assert hold["percent_of_expected"] == "76" and hold["weight_event_id"]
    [release] = rows["releases"]
    assert (release["mouse_id"], release["released_by"], release["outcome"]) == (
        "M3",
        "ada",
        "honoured",
    )
    assert release["reason"] == "vet checked: =fine"  # not at the start: left as it is
    [change] = rows["interventions"]
    assert (change["mouse_id"], change["kind"], change["requested_by"], change["to_stage"]) == (
        "M2",
        "override",
        "bob",
        "s2_training",
    )
    assert change["reason"] == HOSTILE and change["outcome"] == "honoured"
    [note] = rows["notes"]
    assert (note["noted_by"], note["text"]) == ("ada", f"coat {HOSTILE}")
    # the report: every mouse, every value escaped
    page = (out / "welfare.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    for mouse in ("M1", "M2", "M3"):
        assert f'id="{mouse}"' in page
    assert "vet checked: =fine" in page and "holds (1)" in page
    assert "welfare-holds.csv" in result.output and "welfare.html" in result.output


def test_only_the_format_asked(lab_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    only_html = runner.invoke(
        app,
        ["export", "--welfare", "-f", "html", "--out", str(tmp_path / "h"), "--db-url", lab_url],
    )
    assert only_html.exit_code == 0, only_html.output
    assert [p.name for p in (tmp_path / "h").iterdir()] == ["welfare.html"]
    only_csv = runner.invoke(
        app, ["export", "--welfare", "-f", "csv", "--out", str(tmp_path / "c"), "--db-url", lab_url]
    )
    assert only_csv.exit_code == 0 and not (tmp_path / "c" / "welfare.html").exists()
    refused = runner.invoke(
        app,
        ["export", "--welfare", "-f", "parquet", "--out", str(tmp_path / "p"), "--db-url", lab_url],
    )
    assert refused.exit_code == 2 and "not parquet" in refused.output
    refused = runner.invoke(
        app, ["export", "-f", "html", "--out", str(tmp_path / "t"), "--db-url", lab_url]
    )
    assert refused.exit_code == 2 and "--format html is for --welfare" in refused.output
    assert not (tmp_path / "p").exists() and not (tmp_path / "t").exists()


def test_a_cell_a_spreadsheet_would_run_is_quoted() -> None:
    assert cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert cell("-1+1") == "'-1+1" and cell("@x") == "'@x"
    assert cell(-1.5) == "-1.5" and cell(None) == "" and cell(True) == "true"
