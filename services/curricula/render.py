"""Diagrams of a curriculum: the stage graph with its rules on the edges, each stage's
parameters, and a legend, as Graphviz DOT and (through graphviz's ``dot``) SVG, PNG or PDF.

The stages are placed in curriculum order, top to bottom, and each pair of stages gets one
edge, which lists every rule making that move, numbered in evaluation order within its stage
(the first that holds wins) and coloured by decision; manual moves are dashed; a legend says
so. A stage's box lists the parameters that differ between stages; those shared by every stage
are listed once, in a note.

Two layouts:

``ranks``
    graphviz's ``dot`` lays the graph out, one rank per stage (an invisible chain through the
    stages fixes them; a move back to an earlier stage is drawn with its arrow reversed, so it
    never reorders them). Each edge carries its rules' descriptions and conditions. Right for
    a small curriculum.
``arcs``
    a ladder diagram computed here: the stages in one column, every forward move an arc on the
    right, every move back an arc on the left, arcs nested by span so that a shorter one runs
    inside a longer one, and each edge's rule names written at the stage it leaves; the rules
    are described once, in a table. Right for a dense curriculum (IBL's training status: 32
    rules, most of them shared by several stages). graphviz measures the boxes; the positions
    go into the DOT (``layout=nop2``), so any graphviz draws it as laid out here.

``auto`` takes ``arcs`` for a dense curriculum (a rule shared by three stages or more, or more
than two edges per stage) when graphviz is there to measure, ``ranks`` otherwise.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Literal

from shaping.schemas.events import ParamValue
from shaping.services.curricula.engine import CompiledCurriculum, CompiledRule
from shaping.services.curricula.errors import RenderError

ParameterMode = Literal["differing", "all", "none"]
RuleMode = Literal["auto", "edges", "table"]
Layout = Literal["auto", "ranks", "arcs"]
Format = Literal["svg", "png", "pdf", "dot"]
Measure = Callable[[Mapping[str, str]], dict[str, tuple[float, float]]]

FORMATS: tuple[Format, ...] = ("svg", "png", "pdf", "dot")
EXTENSIONS: dict[str, Format] = {
    ".svg": "svg",
    ".png": "png",
    ".pdf": "pdf",
    ".dot": "dot",
    ".gv": "dot",
}

COLOURS = {
    "progress": "#1b7837",
    "rollback": "#b2182b",
    "skip": "#2166ac",
    "graduate": "#762a83",
}
MEANINGS = {
    "progress": "on to a later stage",
    "rollback": "back to an easier stage",
    "skip": "past one or more stages",
    "graduate": "to a final stage",
}
OTHER = "#333333"
GREY = "#555555"
HEADER = "#eeeeee"

FONT = "Helvetica"
EDGE_FONT_SIZE = 9
ARROW = 0.7  # arrowsize; graphviz's arrowhead is 10 points long at 1


@dataclass(frozen=True)
class RuleEdge:
    """The rules that move a mouse from one stage to another: one edge of the diagram.

    Attributes:
        tail: the stage the rules are evaluated at.
        head: the stage they move the mouse to.
        rules: the rules, in evaluation order.
        orders: each rule's number in its stage's evaluation order (None: manual).
    """

    tail: str
    head: str
    rules: tuple[CompiledRule, ...]
    orders: tuple[int | None, ...]

    @property
    def decisions(self) -> list[str]:
        """The distinct decisions of its rules, in order."""
        return list(dict.fromkeys(r.rule.decision for r in self.rules))

    @property
    def manual(self) -> bool:
        """Whether only an operator makes this move."""
        return all(r.rule.trigger == "manual" for r in self.rules)

    @property
    def colour(self) -> str:
        """Its colour (several decisions: parallel lines, one per decision)."""
        return ":".join(COLOURS.get(d, OTHER) for d in self.decisions)


# --- text ----------------------------------------------------------------------------------


def _text(value: object, width: int = 0) -> str:
    text = str(value)
    if width:
        text = "\n".join(textwrap.wrap(text, width)) or text
    return html.escape(text).replace("\n", "<br/>")


def _value(value: ParamValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _box(rows: list[str], border: int = 1, padding: int = 3) -> str:
    return (
        f"<table border='{border}' cellborder='0' cellspacing='0' cellpadding='{padding}'>"
        + "".join(rows)
        + "</table>"
    )


# --- the graph's content -------------------------------------------------------------------


def _target(curriculum: CompiledCurriculum, name: str) -> str:
    return name if name in curriculum.stages else curriculum.resolve(name)


def rule_edges(curriculum: CompiledCurriculum) -> list[RuleEdge]:
    """One edge per (stage, next stage) pair, in stage order and then first-rule order."""
    edges: list[RuleEdge] = []
    for name, stage in curriculum.stages.items():
        grouped: dict[str, list[tuple[CompiledRule, int | None]]] = {}
        automatic = 0
        for compiled in stage.rules:
            order: int | None = None
            if compiled.rule.trigger != "manual":
                automatic += 1
                order = automatic
            head = _target(curriculum, compiled.rule.to)
            grouped.setdefault(head, []).append((compiled, order))
        for head, rules in grouped.items():
            orders = tuple(o for _, o in rules)
            edges.append(RuleEdge(name, head, tuple(r for r, _ in rules), orders))
    return edges


RuleKey = tuple[str, str, str, str]


def _rule_key(rule: CompiledRule) -> RuleKey:
    condition = rule.condition.text if rule.condition is not None else ""
    return (rule.rule.name, rule.rule.decision, rule.rule.description, condition)


def is_dense(curriculum: CompiledCurriculum, edges: list[RuleEdge] | None = None) -> bool:
    """A ladder rather than a path: a rule shared by three stages or more, or more than two
    edges per stage."""
    edges = rule_edges(curriculum) if edges is None else edges
    seen: dict[RuleKey, int] = {}
    for edge in edges:
        for rule in edge.rules:
            seen[_rule_key(rule)] = seen.get(_rule_key(rule), 0) + 1
    return any(n > 2 for n in seen.values()) or len(edges) > 2 * len(curriculum.stages)


def _constant_parameters(curriculum: CompiledCurriculum) -> set[str]:
    stages = curriculum.stages.values()
    every = {k for s in stages for k in s.parameters}
    return {
        k
        for k in every
        if all(k in s.parameters for s in stages)
        and len({repr(s.parameters[k]) for s in stages}) == 1
    }


def _stage_label(
    curriculum: CompiledCurriculum,
    name: str,
    parameters: ParameterMode,
    constant: set[str],
    filler: float = 0.0,
) -> str:
    compiled = curriculum.stages[name]
    stage = compiled.stage
    title = f"<b>{_text(name)}</b>"
    if name == curriculum.first_stage:
        title += " (start)"
    if stage.terminal:
        title += " (terminal)"
    rows = [f"<tr><td colspan='2' bgcolor='{HEADER}'>{title}</td></tr>"]
    if stage.description:
        rows.append(f"<tr><td colspan='2'><i>{_text(stage.description, 40)}</i></td></tr>")
    if parameters != "none":
        for key in compiled.parameters:
            if parameters == "all" or key not in constant:
                rows.append(
                    f"<tr><td align='left'>{_text(key)}</td>"
                    f"<td align='left'>{_text(_value(compiled.parameters[key]))}</td></tr>"
                )
    for policy in compiled.policies:
        rows.append(
            f"<tr><td colspan='2' align='left'><font color='{GREY}'>policy "
            f"{_text(policy.policy.name)}: {_text(policy.policy.description, 40)}"
            f"</font></td></tr>"
        )
    if compiled.warnings:
        names = ", ".join(dict.fromkeys(w.warning.name for w in compiled.warnings))
        rows.append(
            f"<tr><td colspan='2' align='left'><font color='{GREY}' point-size='9'>"
            f"warns: {_text(names, 44)}</font></td></tr>"
        )
    if filler >= 1:
        rows.append(f"<tr><td colspan='2' height='{math.ceil(filler)}'></td></tr>")
    return _box(rows, border=3 if stage.terminal else 1)


def _heading(rule: CompiledRule, order: int | None) -> str:
    if rule.rule.trigger == "manual":
        return "manual"
    return f"{order}. per trial" if rule.rule.evaluate == "trial" else f"{order}."


def _described_label(edge: RuleEdge) -> str:
    """Each rule with its description and condition (the ``ranks`` layout)."""
    lines = []
    for rule, order in zip(edge.rules, edge.orders, strict=True):
        colour = COLOURS.get(rule.rule.decision, OTHER)
        line = (
            f"<font color='{colour}'><b>{_text(_heading(rule, order))} "
            f"{_text(rule.rule.decision)}</b>: {_text(rule.rule.description, 38)}</font>"
        )
        if rule.condition is not None:
            line += (
                f"<br/><font point-size='8' color='{GREY}'>{_text(rule.condition.text, 48)}</font>"
            )
        lines.append(line)
    return "<br/>".join(lines)


def _named_label(edge: RuleEdge, align: str = "left") -> str:
    """Each rule by its number and name (the descriptions are in the rules table)."""
    rows = []
    for rule, order in zip(edge.rules, edge.orders, strict=True):
        colour = COLOURS.get(rule.rule.decision, OTHER)
        rows.append(
            f"<tr><td align='{align}'><font color='{colour}'><b>{_text(_heading(rule, order))}"
            f"</b> {_text(rule.rule.name)}</font></td></tr>"
        )
    return _box(rows, border=0, padding=0)


def _legend_label(named: bool) -> str:
    rows = [f"<tr><td colspan='2' bgcolor='{HEADER}'><b>legend</b></td></tr>"]
    for decision, colour in COLOURS.items():
        rows.append(
            f"<tr><td align='left'><font color='{colour}'><b>━━━━━</b></font></td>"
            f"<td align='left'><font color='{colour}'><b>{decision}</b></font>: "
            f"{MEANINGS[decision]}</td></tr>"
        )
    rows.append(
        f"<tr><td align='left'><font color='{OTHER}'><b>╍ ╍ ╍</b></font></td>"
        "<td align='left'><b>manual</b>: only an operator makes the move</td></tr>"
    )
    numbering = (
        "<b>1.</b> rule_name: a rule, numbered in its stage's evaluation order"
        if named
        else "<b>1.</b> a rule, numbered in its stage's evaluation order"
    )
    rows.append(
        f"<tr><td colspan='2' align='left'>{numbering};<br/>the first that holds wins, "
        "none holding: the mouse stays</td></tr>"
    )
    if named:
        rows.append(
            "<tr><td colspan='2' align='left'>forward moves on the right, moves back on "
            "the left</td></tr>"
        )
    return _box(rows)


def _rules_label(edges: list[RuleEdge]) -> str:
    keys = list(dict.fromkeys(_rule_key(r) for e in edges for r in e.rules))
    names: dict[str, int] = {}
    for key in keys:
        names[key[0]] = names.get(key[0], 0) + 1
    stages: dict[RuleKey, list[str]] = {}
    for edge in edges:
        for rule in edge.rules:
            stages.setdefault(_rule_key(rule), []).append(edge.tail)
    rows = [f"<tr><td colspan='2' bgcolor='{HEADER}'><b>rules</b></td></tr>"]
    for key in keys:
        name, decision, description, condition = key
        colour = COLOURS.get(decision, OTHER)
        where = ""
        if names[name] > 1:  # one name, several meanings: say where each applies
            where = f"<br/><font point-size='8'>at {_text(', '.join(stages[key]), 30)}</font>"
        text = _text(description, 56)
        if condition:
            text += f"<br/><font point-size='8' color='{GREY}'>when {_text(condition, 70)}</font>"
        rows.append(
            f"<tr><td align='left' valign='top'><font color='{colour}'><b>{_text(name)}</b>"
            f"<br/>{_text(decision)}</font>{where}</td>"
            f"<td align='left' valign='top' balign='left'>{text}</td></tr>"
        )
    return _box(rows)


def _constants_label(curriculum: CompiledCurriculum, constant: set[str]) -> str:
    first = next(iter(curriculum.stages.values()))
    rows = [f"<tr><td colspan='2' bgcolor='{HEADER}'><b>same at every stage</b></td></tr>"]
    rows.extend(
        f"<tr><td align='left'>{_text(k)}</td><td align='left'>"
        f"{_text(_value(first.parameters[k]))}</td></tr>"
        for k in sorted(constant)
    )
    return _box(rows, padding=2)


def _title_label(curriculum: CompiledCurriculum) -> str:
    return (
        f"<b>{_text(curriculum.name)} {_text(curriculum.version)}</b><br/>"
        f"<font point-size='10'>{_text(curriculum.description, 90)}</font>"
    )


# --- the ranks layout (graphviz's dot) -----------------------------------------------------


def _ranks_dot(
    curriculum: CompiledCurriculum,
    edges: list[RuleEdge],
    parameters: ParameterMode,
    named: bool,
) -> str:
    names = list(curriculum.stages)
    index = {name: i for i, name in enumerate(names)}
    constant = _constant_parameters(curriculum)
    lines = [
        f"digraph {_id(curriculum.name + ' ' + curriculum.version)} {{",
        f"  graph [rankdir=TB, fontname={FONT}, nodesep=0.6, ranksep=0.5, labelloc=t,",
        f"         newrank=true, label=<{_title_label(curriculum)}<br/> >];",
        f"  node [shape=plaintext, fontname={FONT}, fontsize=10];",
        f"  edge [fontname={FONT}, fontsize={EDGE_FONT_SIZE}, arrowsize={ARROW}];",
    ]
    for name in names:
        label = _stage_label(curriculum, name, parameters, constant)
        lines.append(f"  {_id(name)} [label=<{label}>];")
    # one rank per stage, in curriculum order
    for tail, head in pairwise(names):
        lines.append(f"  {_id(tail)} -> {_id(head)} [style=invis, weight=20];")
    for edge in edges:
        colours = [COLOURS.get(d, OTHER) for d in edge.decisions]
        attributes = [
            f"label=<{_named_label(edge) if named else _described_label(edge)}>",
            f'color="{edge.colour}"',
            f'fontcolor="{colours[0]}"',
            f"style={'dashed' if edge.manual else 'solid'}",
        ]
        if index[edge.head] <= index[edge.tail]:
            # a move back: laid out from the earlier stage, arrow at that end, so it keeps
            # the ranks and is placed like any other edge
            attributes.append("dir=back")
            lines.append(f"  {_id(edge.head)} -> {_id(edge.tail)} [{', '.join(attributes)}];")
        else:
            lines.append(f"  {_id(edge.tail)} -> {_id(edge.head)} [{', '.join(attributes)}];")
    side = ["legend"]
    lines.append(f"  legend [label=<{_legend_label(named)}>];")
    if named and edges:
        lines.append(f"  rules [label=<{_rules_label(edges)}>];")
        side.append("rules")
    if parameters == "differing" and constant:
        lines.append(f"  constant_parameters [label=<{_constants_label(curriculum, constant)}>];")
        side.append("constant_parameters")
    lines.append(f"  {{rank=same; {_id(names[0])}; {'; '.join(side)};}}")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- the arcs layout (computed here, drawn by graphviz as given) ----------------------------

PORT_GAP = 2.0  # between two labelled ports
BARE_PORT = 9.0  # height of a port without a label (an arriving edge)
NODE_PAD = 8.0  # between a box's border and its first or last port
STAGE_GAP = 26.0  # between two stages
LABEL_GAP = 5.0  # between a box and the labels beside it
LANE_GAP = 8.0  # between two arcs
CORNER = 5.0  # radius of an arc's corners
SIDEBAR_GAP = 36.0  # between the outermost arc and the legend column


@dataclass
class _Port:
    edge: RuleEdge
    lane: int
    outgoing: bool
    height: float
    y: float = 0.0


@dataclass
class _Side:
    ports: list[_Port] = field(default_factory=list)

    @property
    def height(self) -> float:
        return sum(p.height for p in self.ports) + 2 * NODE_PAD if self.ports else 0.0


def _lanes(spans: list[tuple[RuleEdge, int, int]]) -> dict[tuple[str, str], int]:
    """Lane 1 (innermost) and up: each edge gets the lowest lane no overlapping edge has, in
    order of span, so an arc inside another runs inside it."""
    placed: list[tuple[int, int, int]] = []
    lanes: dict[tuple[str, str], int] = {}
    for edge, low, high in sorted(spans, key=lambda s: (s[2] - s[1], s[1])):
        # arcs meeting at a stage get different lanes too, so none seems to run through it
        taken = {lane for a, b, lane in placed if max(a, low) <= min(b, high)}
        lane = next(n for n in range(1, len(placed) + 2) if n not in taken)
        placed.append((low, high, lane))
        lanes[(edge.tail, edge.head)] = lane
    return lanes


def _rounded(points: list[tuple[float, float]], radius: float) -> list[tuple[float, float]]:
    """A polyline with rounded corners as cubic Bézier control points (3n + 1 of them)."""
    out = [points[0]]

    def line(a: tuple[float, float], b: tuple[float, float]) -> None:
        third = ((b[0] - a[0]) / 3, (b[1] - a[1]) / 3)
        out.extend([(a[0] + third[0], a[1] + third[1]), (b[0] - third[0], b[1] - third[1]), b])

    start = points[0]
    for i in range(1, len(points) - 1):
        before, corner, after = points[i - 1], points[i], points[i + 1]
        d1 = math.dist(before, corner)
        d2 = math.dist(corner, after)
        r = min(radius, d1 / 2, d2 / 2)
        if r <= 0:
            continue
        enter = (
            corner[0] + (before[0] - corner[0]) * r / d1,
            corner[1] + (before[1] - corner[1]) * r / d1,
        )
        leave = (
            corner[0] + (after[0] - corner[0]) * r / d2,
            corner[1] + (after[1] - corner[1]) * r / d2,
        )
        line(start, enter)
        k = 0.552  # a quarter circle's control distance, as a fraction of the radius
        out.extend(
            [
                (enter[0] + (corner[0] - enter[0]) * k, enter[1] + (corner[1] - enter[1]) * k),
                (leave[0] + (corner[0] - leave[0]) * k, leave[1] + (corner[1] - leave[1]) * k),
                leave,
            ]
        )
        start = leave
    line(start, points[-1])
    return out


def measure_with_dot(labels: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """Width and height in points of each HTML label, as graphviz draws it.

    Raises:
        RenderError: when ``dot`` is missing or fails.
    """
    lines = [
        "digraph measure {",
        f"  node [shape=plaintext, fontname={FONT}, fontsize=10, margin=0, width=0, height=0];",
    ]
    lines.extend(f"  {_id(name)} [label=<{label}>];" for name, label in labels.items())
    lines.append("}")
    out = _run_dot("\n".join(lines) + "\n", "json")
    sizes: dict[str, tuple[float, float]] = {}
    for item in json.loads(out).get("objects", []):
        if item.get("name") in labels:
            sizes[item["name"]] = (float(item["width"]) * 72, float(item["height"]) * 72)
    return sizes


def _edge_label_node(edge: RuleEdge, align: str) -> str:
    return f"<font point-size='{EDGE_FONT_SIZE}'>{_named_label(edge, align)}</font>"


def _arcs_dot(
    curriculum: CompiledCurriculum,
    edges: list[RuleEdge],
    parameters: ParameterMode,
    measure: Measure,
) -> str:
    names = list(curriculum.stages)
    index = {name: i for i, name in enumerate(names)}
    constant = _constant_parameters(curriculum)
    with_constants = parameters == "differing" and bool(constant)
    forward = [e for e in edges if index[e.head] > index[e.tail]]
    backward = [e for e in edges if index[e.head] <= index[e.tail]]
    right = _lanes([(e, index[e.tail], index[e.head]) for e in forward])
    left = _lanes([(e, index[e.head], index[e.tail]) for e in backward])

    def key(edge: RuleEdge) -> str:
        return f"edge {index[edge.tail]} {index[edge.head]}"

    # what graphviz must measure: the boxes and the rule names beside them
    labels = {
        f"stage {i}": _stage_label(curriculum, n, parameters, constant) for i, n in enumerate(names)
    }
    labels |= {key(e): _edge_label_node(e, "left") for e in forward}
    labels |= {key(e): _edge_label_node(e, "right") for e in backward}
    labels["title"] = _title_label(curriculum)
    labels["legend"] = _legend_label(True)
    if edges:
        labels["rules"] = _rules_label(edges)
    if with_constants:
        labels["constant_parameters"] = _constants_label(curriculum, constant)
    sizes = measure(labels)

    # ports: on the right, arriving edges above leaving ones; on the left, leaving above
    # arriving; ordered so that no two arcs of one box cross each other
    sides = {(n, s): _Side() for n in names for s in ("left", "right")}
    for e in forward:
        lane = right[(e.tail, e.head)]
        sides[(e.tail, "right")].ports.append(_Port(e, lane, True, sizes[key(e)][1] + PORT_GAP))
        sides[(e.head, "right")].ports.append(_Port(e, lane, False, BARE_PORT))
    for e in backward:
        lane = left[(e.tail, e.head)]
        sides[(e.tail, "left")].ports.append(_Port(e, lane, True, sizes[key(e)][1] + PORT_GAP))
        sides[(e.head, "left")].ports.append(_Port(e, lane, False, BARE_PORT))
    for (_, where), side in sides.items():
        if where == "right":  # arriving: inner lanes higher; leaving: outer lanes higher
            side.ports.sort(key=lambda p: (p.outgoing, -p.lane if p.outgoing else p.lane))
        else:  # leaving: inner lanes higher; arriving: outer lanes higher
            side.ports.sort(key=lambda p: (not p.outgoing, -p.lane if not p.outgoing else p.lane))

    # the boxes, grown where their ports need more room, measured again
    fillers = {}
    for i, name in enumerate(names):
        needed = max(sides[(name, "left")].height, sides[(name, "right")].height)
        fillers[name] = max(0.0, needed - sizes[f"stage {i}"][1])
        if fillers[name] >= 1:
            fillers[name] += 1
            labels[f"stage {i}"] = _stage_label(
                curriculum, name, parameters, constant, fillers[name]
            )
    grown = {f"stage {i}": labels[f"stage {i}"] for i, n in enumerate(names) if fillers[n] >= 1}
    if grown:
        sizes |= measure(grown)

    # vertical placement (y grows downwards here, flipped at the end)
    title_w, title_h = sizes["title"]
    top: dict[str, float] = {}
    y = title_h + 18.0
    for i, name in enumerate(names):
        top[name] = y
        y += sizes[f"stage {i}"][1] + STAGE_GAP
    bottom_of_stages = y - STAGE_GAP
    width = {n: sizes[f"stage {i}"][0] for i, n in enumerate(names)}
    height = {n: sizes[f"stage {i}"][1] for i, n in enumerate(names)}
    for (name, _), side in sides.items():
        used = sum(p.height for p in side.ports)
        y = top[name] + (height[name] - used) / 2
        for port in side.ports:
            # a leaving edge runs under its label; an arriving one in the middle of its slot
            port.y = y + port.height - 1.0 if port.outgoing else y + port.height / 2
            y += port.height

    # horizontal placement: the column at x = 0, labels beside it, then the arcs
    def label_width(edge: RuleEdge) -> float:
        return sizes[key(edge)][0]

    right_start = (
        max(
            [width[n] / 2 for n in names]
            + [width[e.tail] / 2 + LABEL_GAP + label_width(e) for e in forward]
        )
        + 2 * LABEL_GAP
    )
    left_start = (
        min(
            [-width[n] / 2 for n in names]
            + [-width[e.tail] / 2 - LABEL_GAP - label_width(e) for e in backward]
        )
        - 2 * LABEL_GAP
    )
    right_lanes = max(right.values(), default=0)
    left_lanes = max(left.values(), default=0)

    def lane_x(edge: RuleEdge) -> float:
        if (edge.tail, edge.head) in right:
            return right_start + (right[(edge.tail, edge.head)] - 1) * LANE_GAP
        return left_start - (left[(edge.tail, edge.head)] - 1) * LANE_GAP

    def port_y(edge: RuleEdge, stage: str, outgoing: bool) -> float:
        where = "right" if (edge.tail, edge.head) in right else "left"
        return next(
            p.y for p in sides[(stage, where)].ports if p.edge is edge and p.outgoing == outgoing
        )

    # the legend, the rules and the shared parameters in a column right of the arcs
    sidebar_x = right_start + max(right_lanes - 1, 0) * LANE_GAP + SIDEBAR_GAP
    extras = ["legend"] + (["rules"] if edges else [])
    if with_constants:
        extras.append("constant_parameters")
    centres: dict[str, tuple[float, float]] = {}
    y = top[names[0]]
    for name in extras:
        w, h = sizes[name]
        centres[name] = (sidebar_x + w / 2, y + h / 2)
        y += h + 18.0
    column_left = left_start - max(left_lanes - 1, 0) * LANE_GAP - 6.0
    # the title, centred over the column unless that sticks out on the left
    centres["title"] = (max(0.0, column_left + title_w / 2), title_h / 2 + 4.0)
    bottom = max(bottom_of_stages, *(c[1] + sizes[n][1] / 2 for n, c in centres.items()))
    for i, name in enumerate(names):
        centres[f"stage {i}"] = (0.0, top[name] + height[name] / 2)

    def at(point: tuple[float, float]) -> str:
        """graphviz's coordinates: points, y upwards, the drawing's corner near 0,0."""
        return f"{point[0] - column_left + 10:.2f},{bottom - point[1] + 10:.2f}"

    lines = [
        f"digraph {_id(curriculum.name + ' ' + curriculum.version)} {{",
        "  // laid out by services.curricula.render (the arcs layout), drawn as positioned",
        f"  graph [layout=nop2, splines=true, outputorder=edgesfirst, pad=0.25, fontname={FONT}];",
        f"  node [shape=plaintext, fontname={FONT}, fontsize=10, margin=0, width=0, height=0];",
        f"  edge [fontname={FONT}, fontsize={EDGE_FONT_SIZE}, arrowsize={ARROW}];",
        f'  title [label=<{labels["title"]}>, pos="{at(centres["title"])}!"];',
    ]
    for i, name in enumerate(names):
        label = labels[f"stage {i}"]
        lines.append(f'  {_id(name)} [label=<{label}>, pos="{at(centres[f"stage {i}"])}!"];')
    for name in extras:
        lines.append(f'  {name} [label=<{labels[name]}>, pos="{at(centres[name])}!"];')

    arrow = 10 * ARROW
    for edge in edges:
        on_right = (edge.tail, edge.head) in right
        sign = 1 if on_right else -1
        x0 = sign * width[edge.tail] / 2
        x1 = sign * width[edge.head] / 2
        y0 = port_y(edge, edge.tail, True)
        y1 = port_y(edge, edge.head, False)
        lx = lane_x(edge)
        path = _rounded([(x0, y0), (lx, y0), (lx, y1), (x1 + sign * arrow, y1)], CORNER)
        label_w, label_h = sizes[key(edge)]
        label_centre = (x0 + sign * (LABEL_GAP + label_w / 2), y0 - 1.0 - label_h / 2)
        colours = [COLOURS.get(d, OTHER) for d in edge.decisions]
        attributes = [
            f"label=<{_named_label(edge, 'left' if on_right else 'right')}>",
            f'lp="{at(label_centre)}"',
            f'pos="e,{at((x1, y1))} {" ".join(at(p) for p in path)}"',
            f'color="{edge.colour}"',
            f'fontcolor="{colours[0]}"',
            f"style={'dashed' if edge.manual else 'solid'}",
        ]
        lines.append(f"  {_id(edge.tail)} -> {_id(edge.head)} [{', '.join(attributes)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- entry points --------------------------------------------------------------------------


def to_dot(
    curriculum: CompiledCurriculum,
    parameters: ParameterMode = "differing",
    rules: RuleMode = "auto",
    layout: Layout = "auto",
    measure: Measure | None = None,
) -> str:
    """The curriculum as a Graphviz DOT graph.

    Args:
        curriculum: the curriculum to draw.
        parameters: the parameters in each stage's box: those that differ between stages, all
            of them, or none.
        rules: ``edges`` writes each rule's description and condition on its edge, ``table``
            only its name, describing each rule once in a table; ``auto``: ``table`` for a
            dense curriculum (``is_dense``).
        layout: ``ranks`` (graphviz's dot places the stages, one rank each), ``arcs`` (the
            ladder layout, rule names only; needs graphviz to measure the boxes) or ``auto``
            (``arcs`` for a dense curriculum when graphviz is there).
        measure: sizes of HTML labels in points (graphviz's, by default).

    Raises:
        RenderError: for the arcs layout without graphviz.
    """
    edges = rule_edges(curriculum)
    dense = is_dense(curriculum, edges)
    if layout == "auto":
        layout = "arcs" if dense and rules != "edges" and (measure or dot_available()) else "ranks"
    if layout == "arcs":
        return _arcs_dot(curriculum, edges, parameters, measure or measure_with_dot)
    named = rules == "table" or (rules == "auto" and dense)
    return _ranks_dot(curriculum, edges, parameters, named)


def format_for(path: Path) -> Format:
    """The diagram format a file's extension asks for.

    Raises:
        RenderError: for an extension that names no format this renderer writes.
    """
    suffix = path.suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    said = f"the extension {suffix!r} of" if suffix else "no extension on"
    raise RenderError(
        f"cannot tell the diagram format from {said} {path}: name the file .svg, .png, .pdf "
        "or .dot (or say --format svg|png|pdf|dot)"
    )


def dot_available() -> bool:
    """Whether graphviz's ``dot`` is on the PATH."""
    return shutil.which("dot") is not None


def _run_dot(source: str, fmt: str) -> bytes:
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError(
            "graphviz's `dot` is not installed (Debian: apt-get install graphviz); "
            "`shaping curriculum render --format dot` writes the graph without it"
        )
    try:
        done = subprocess.run(
            [dot, f"-T{fmt}"],
            input=source.encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RenderError(f"dot failed: {exc}") from exc
    if done.returncode != 0:
        raise RenderError(f"dot failed: {done.stderr.decode('utf-8', 'replace').strip()}")
    return done.stdout


def render(
    curriculum: CompiledCurriculum,
    fmt: Format = "svg",
    parameters: ParameterMode = "differing",
    rules: RuleMode = "auto",
    layout: Layout = "auto",
) -> bytes:
    """The diagram in ``fmt``: DOT as is, SVG, PNG or PDF drawn by graphviz (``dot -T``).

    Raises:
        RenderError: for an unknown format, or when ``dot`` is missing or fails.
    """
    if fmt not in FORMATS:
        raise RenderError(f"unknown diagram format {fmt!r}: svg, png, pdf or dot")
    if fmt == "dot":
        return to_dot(curriculum, parameters, rules, layout).encode("utf-8")
    if not dot_available():
        _run_dot("", fmt)  # raises, saying how to install graphviz
    return _run_dot(to_dot(curriculum, parameters, rules, layout), fmt)


def to_svg(
    curriculum: CompiledCurriculum,
    parameters: ParameterMode = "differing",
    rules: RuleMode = "auto",
    layout: Layout = "auto",
) -> bytes:
    """The diagram as SVG, drawn by graphviz.

    Raises:
        RenderError: when ``dot`` is missing or fails.
    """
    return render(curriculum, "svg", parameters, rules, layout)
