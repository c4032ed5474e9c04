"""`shaping curriculum render`: the output format follows the file's extension, and a ladder
(IBL's training status) is drawn with one edge per stage pair, ordered ranks and a legend."""

from __future__ import annotations

import json
import re
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.services.cli import app
from shaping.services.curricula.errors import RenderError
from shaping.services.curricula.loader import load_curriculum
from shaping.services.curricula.render import COLOURS, format_for, rule_edges, to_dot
from tests.support.scripts import REPO

BASIC = REPO / "curricula" / "basic-shaping.yaml"
IBL = REPO / "curricula" / "ibl" / "training-status.yaml"

MAGIC = {
    "svg": (b"<?xml", b"<svg"),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "pdf": (b"%PDF-",),
    "dot": (b"digraph ",),
}

EDGE = re.compile(r'^\s*("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*") \[(.*)\];$')


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _unquote(text: str) -> str:
    return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")


def drawn_edges(dot_source: str) -> list[tuple[str, str, str]]:
    """(tail, head, attributes) of every visible edge of a DOT graph."""
    found = []
    for line in dot_source.splitlines():
        match = EDGE.match(line)
        if match and "style=invis" not in match.group(3):
            tail, head = _unquote(match.group(1)), _unquote(match.group(2))
            if "dir=back" in match.group(3):  # drawn the other way round
                tail, head = head, tail
            found.append((tail, head, match.group(3)))
    return found


def laid_out_heights(dot_source: str, dot: str) -> dict[str, float]:
    """Each node's y in graphviz's layout of the graph (upwards)."""
    laid_out = subprocess.run(
        [dot, "-Tjson"], input=dot_source.encode(), capture_output=True, check=True
    ).stdout
    return {
        o["name"]: float(o["pos"].split(",")[1])
        for o in json.loads(laid_out)["objects"]
        if "pos" in o
    }


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf", "dot"])
def test_the_format_follows_the_extension(tmp_path: Path, fmt: str, dot: str) -> None:
    out = tmp_path / f"basic.{fmt}"
    code, output = invoke("curriculum", "render", str(BASIC), "-o", str(out))
    assert code == 0, output
    assert out.read_bytes().startswith(MAGIC[fmt]), out.read_bytes()[:16]


def test_an_upper_case_extension_and_an_explicit_format_agree(tmp_path: Path, dot: str) -> None:
    out = tmp_path / "BASIC.PNG"
    assert invoke("curriculum", "render", str(BASIC), "-o", str(out))[0] == 0
    assert out.read_bytes().startswith(MAGIC["png"][0])
    out = tmp_path / "basic.png"
    code, _ = invoke("curriculum", "render", str(BASIC), "-o", str(out), "--format", "png")
    assert code == 0 and out.read_bytes().startswith(MAGIC["png"][0])
    # no extension: --format says it
    out = tmp_path / "diagram"
    code, _ = invoke("curriculum", "render", str(BASIC), "-o", str(out), "--format", "pdf")
    assert code == 0 and out.read_bytes().startswith(MAGIC["pdf"][0])


@pytest.mark.parametrize("name", ["basic.jpeg", "basic.txt", "basic"])
def test_an_unknown_extension_is_refused(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    code, output = invoke("curriculum", "render", str(BASIC), "-o", str(out))
    assert code == 2
    assert "cannot tell the diagram format" in output
    assert ".svg, .png, .pdf or .dot" in output
    assert not out.exists()


def test_a_format_contradicting_the_extension_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "basic.png"
    code, output = invoke("curriculum", "render", str(BASIC), "-o", str(out), "--format", "svg")
    assert code == 2 and "--format svg" in output and "basic.png" in output
    assert not out.exists()
    code, output = invoke("curriculum", "render", str(BASIC), "--format", "gif")
    assert code == 2 and "svg, png, pdf or dot" in output


def test_format_for() -> None:
    assert format_for(Path("a/b.svg")) == "svg"
    assert format_for(Path("b.PDF")) == "pdf"
    assert format_for(Path("b.gv")) == "dot"
    with pytest.raises(RenderError, match=r"'\.jpg'"):
        format_for(Path("b.jpg"))


def test_without_out_svg_goes_to_stdout(dot: str) -> None:
    code, output = invoke("curriculum", "render", str(BASIC))
    assert code == 0 and "<svg" in output


# --- the IBL ladder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ibl_dot(dot: str) -> str:
    return to_dot(load_curriculum(IBL))


def _pairs() -> dict[tuple[str, str], list[str]]:
    """The rules of each (stage, next stage) pair of the IBL ladder, in evaluation order."""
    curriculum = load_curriculum(IBL)
    pairs: dict[tuple[str, str], list[str]] = {}
    for name, stage in curriculum.stages.items():
        for rule in stage.rules:
            pairs.setdefault((name, curriculum.resolve(rule.rule.to)), []).append(rule.rule.name)
    return pairs


@pytest.mark.parametrize("layout", ["arcs", "ranks"])
def test_the_ibl_ladder_has_one_edge_per_stage_pair(layout: str, dot: str) -> None:
    curriculum = load_curriculum(IBL)
    pairs = _pairs()
    assert len(curriculum.stages) == 8 and sum(len(v) for v in pairs.values()) == 32
    edges = drawn_edges(to_dot(curriculum, layout=layout))  # type: ignore[arg-type]
    assert len(edges) == len(pairs)
    assert sorted((t, h) for t, h, _ in edges) == sorted(pairs)
    for tail, head, attributes in edges:
        for rule_name in pairs[(tail, head)]:
            assert rule_name in attributes  # its rules are listed on it
    # the grouping itself: one group per pair, the rules in evaluation order
    groups = rule_edges(curriculum)
    assert [(g.tail, g.head) for g in groups] == list(pairs)
    assert [[r.rule.name for r in g.rules] for g in groups] == list(pairs.values())


def test_the_ibl_ladder_is_drawn_as_arcs_in_stage_order(ibl_dot: str, dot: str) -> None:
    stages = load_curriculum(IBL).stage_names
    assert "layout=nop2" in ibl_dot  # positioned here, drawn as positioned
    # the positions in the DOT: each stage below the one before it, all in one column
    placed = {}
    for line in ibl_dot.splitlines():
        match = re.match(
            r'^\s*("(?:[^"\\]|\\.)*") \[label=<.*, pos="([-\d.]+),([-\d.]+)!"\];$', line
        )
        if match:
            placed[_unquote(match.group(1))] = (float(match.group(2)), float(match.group(3)))
    assert [placed[s][1] for s in stages] == sorted((placed[s][1] for s in stages), reverse=True)
    assert len({placed[s][0] for s in stages}) == 1
    # as graphviz lays it out
    heights = laid_out_heights(ibl_dot, dot)
    assert [heights[s] for s in stages] == sorted(heights[s] for s in stages)[::-1]
    assert len({heights[s] for s in stages}) == len(stages)
    # forward moves on one side of the column, moves back on the other
    index = {s: i for i, s in enumerate(stages)}
    for tail, head, attributes in drawn_edges(ibl_dot):
        spline = re.search(r'pos="e,([^"]*)"', attributes)
        assert spline is not None
        xs = [float(p.split(",")[0]) for p in spline.group(1).split()]
        column = placed[stages[0]][0]
        if index[head] > index[tail]:
            assert min(xs) >= column, (tail, head)
        else:
            assert max(xs) <= column, (tail, head)


def test_the_ranks_layout_keeps_the_stage_order_too(dot: str) -> None:
    curriculum = load_curriculum(IBL)
    stages = curriculum.stage_names
    source = to_dot(curriculum, layout="ranks")
    chain = [
        (_unquote(m.group(1)), _unquote(m.group(2)))
        for m in map(EDGE.match, source.splitlines())
        if m and "style=invis" in m.group(3)
    ]
    assert chain == list(pairwise(stages))
    heights = laid_out_heights(source, dot)
    assert [heights[s] for s in stages] == sorted(heights[s] for s in stages)[::-1]
    assert len({heights[s] for s in stages}) == len(stages)


def test_the_ibl_ladder_has_a_legend_and_describes_each_rule_once(ibl_dot: str) -> None:
    legend = next(line for line in ibl_dot.splitlines() if line.strip().startswith("legend "))
    for decision, colour in COLOURS.items():
        assert decision in legend and colour in legend
    assert "manual" in legend and "evaluation order" in legend
    # the rules are described once, in a table, not on each of their edges
    description = "ibllib&#x27;s status for the window is ready4recording."
    assert ibl_dot.count(description) == 1
    assert ibl_dot.count("reached_ready4recording") == 1 + 7  # the table and 7 edges
    # the edges are coloured by decision
    for tail, head, attributes in drawn_edges(ibl_dot):
        decision = "rollback" if head in ("untrainable", "unbiasable") else "progress"
        assert f'color="{COLOURS[decision]}"' in attributes, (tail, head)


def test_an_edge_with_several_rules_lists_them_all(tmp_path: Path) -> None:
    text = BASIC.read_text().replace(
        "      - name: accuracy_collapsed",
        "      - name: also_expert\n"
        "        decision: graduate\n"
        "        to: graduated\n"
        "        when: session_trials >= 500\n"
        "        description: A very long session.\n"
        "      - name: accuracy_collapsed",
    )
    assert "also_expert" in text
    (tmp_path / "basic.yaml").write_text(text)
    curriculum = load_curriculum(tmp_path / "basic.yaml")
    edges = [e for e in drawn_edges(to_dot(curriculum)) if e[0] == "s3_full_task"]
    assert [(t, h) for t, h, _ in edges] == [
        ("s3_full_task", "graduated"),
        ("s3_full_task", "s2_training"),
    ]
    label = edges[0][2]
    assert "1. graduate" in label and "2. graduate" in label and "A very long session" in label


def test_a_small_curriculum_keeps_the_descriptions_on_its_edges() -> None:
    basic = to_dot(load_curriculum(BASIC))
    (edge,) = [e for e in drawn_edges(basic) if e[0] == "s1_habituation"]
    assert "Accuracy over the last 200" in edge[2]
    assert "legend " in basic
    tabled = to_dot(load_curriculum(BASIC), rules="table")
    (edge,) = [e for e in drawn_edges(tabled) if e[0] == "s1_habituation"]
    assert "Accuracy over the last 200" not in edge[2] and "Accuracy over the last 200" in tabled


def test_without_graphviz_a_dense_curriculum_still_gives_its_dot(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", "/nonexistent")
    code, output = invoke("curriculum", "render", str(IBL), "--format", "dot")
    assert code == 0 and output.startswith('digraph "ibl 1.0.0"')
    assert "layout=nop2" not in output and "style=invis" in output  # the ranks layout
    code, output = invoke("curriculum", "render", str(IBL), "--format", "dot", "--layout", "arcs")
    assert code == 2 and "apt-get install graphviz" in output
