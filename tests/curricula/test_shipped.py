"""The curricula shipped in curricula/ load, render, and stay in step with their sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shaping.services.curricula import aind, mtrain
from shaping.services.curricula.catalog import default_catalog, shipped_files
from shaping.services.curricula.loader import load_curriculum
from shaping.services.curricula.render import to_svg
from tests.support.aind import AIND_CURRICULA
from tests.support.curricula import REGIMEN
from tests.support.scripts import REPO

SHIPPED = shipped_files()


def test_the_shipped_set() -> None:
    names = {p.relative_to(REPO / "curricula").as_posix() for p in SHIPPED}
    assert names == {
        "basic-shaping.yaml",
        "reach-task.yaml",
        "reach-autopilot.yaml",
        "aind/coupled-baiting-2.3.yaml",
        "mtrain/visual-behavior-task1a.yaml",
        "ibl/training-status.yaml",
    }
    catalog = default_catalog([])
    assert catalog.names() == [
        "Coupled Baiting",
        "VisualBehavior_Task1A",
        "basic-shaping",
        "ibl",
        "reach-autopilot",
        "reach-task",
    ]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_curriculum_is_valid_and_renders(path: Path, dot: str) -> None:
    curriculum = load_curriculum(path)
    svg = to_svg(curriculum).decode()
    for stage in curriculum.stage_names:
        assert stage.replace("&", "&amp;") in svg


@pytest.mark.parametrize(
    ("shipped", "source", "convert"),
    [
        (
            "aind/coupled-baiting-2.3.yaml",
            AIND_CURRICULA / "Coupled Baiting_curriculum_v2.3_schema_v1.0.json",
            aind.convert_file,
        ),
        ("mtrain/visual-behavior-task1a.yaml", REGIMEN, mtrain.convert_file),
    ],
)
def test_imported_curricula_equal_a_fresh_import_of_their_source(
    shipped: str, source: Path, convert: object
) -> None:
    """Regenerate with `shaping curriculum import aind|mtrain SOURCE --out curricula/...`."""
    document, _ = convert(source)  # type: ignore[operator]
    on_disk = yaml.safe_load((REPO / "curricula" / shipped).read_text())
    assert on_disk == document


def test_the_lab_folder_adds_curricula_and_a_bad_file_stops_the_catalog(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        (REPO / "curricula" / "basic-shaping.yaml").read_text().replace("0.1.0", "0.2.0")
    )
    catalog = default_catalog([tmp_path])
    assert catalog.versions("basic-shaping") == ["0.1.0", "0.2.0"]
    (tmp_path / "broken.yaml").write_text("name: x\nversion: 1.0.0\nstages: []\n")
    with pytest.raises(Exception, match=r"broken\.yaml"):
        default_catalog([tmp_path])


def test_every_shipped_curriculum_has_its_diagram_in_the_docs() -> None:
    readme = (REPO / "curricula" / "README.md").read_text()
    for path in SHIPPED:
        diagram = f"diagrams/{path.stem}.svg"
        assert (REPO / "curricula" / diagram).is_file(), diagram
        assert f"({diagram})" in readme
