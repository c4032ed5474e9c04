"""Diagrams of a curriculum: the stage graph with each rule's description on its edge, and a
table of each stage's parameters, as Graphviz DOT and (through graphviz's ``dot``) SVG.

Edges are numbered in evaluation order within their stage (the first that holds wins) and
coloured by decision; manual moves are dashed. A stage's node lists the parameters that differ
between stages; those shared by every stage are listed once, in a note.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import textwrap
from typing import Literal

from schemas.events import ParamValue
from services.curricula.engine import CompiledCurriculum
from services.curricula.errors import RenderError

ParameterMode = Literal["differing", "all", "none"]

COLOURS = {
    "progress": "#1b7837",
    "skip": "#2166ac",
    "graduate": "#762a83",
    "rollback": "#b2182b",
}


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


def to_dot(curriculum: CompiledCurriculum, parameters: ParameterMode = "differing") -> str:
    """The curriculum as a Graphviz DOT graph."""
    stages = curriculum.stages
    names = list(stages)
    every = {k for s in stages.values() for k in s.parameters}
    constant = {
        k
        for k in every
        if all(k in s.parameters for s in stages.values())
        and len({repr(s.parameters[k]) for s in stages.values()}) == 1
    }
    lines = [
        f"digraph {_id(curriculum.name + ' ' + curriculum.version)} {{",
        "  graph [rankdir=TB, fontname=Helvetica, nodesep=0.6, ranksep=0.7, labelloc=t,",
        f"         label=<<b>{_text(curriculum.name)} {_text(curriculum.version)}</b><br/>"
        f"<font point-size='10'>{_text(curriculum.description, 90)}</font>>];",
        "  node [shape=plaintext, fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    for name in names:
        compiled = stages[name]
        stage = compiled.stage
        border = "3" if stage.terminal else "1"
        start = name == curriculum.first_stage
        title = f"<b>{_text(name)}</b>" + (" (start)" if start else "")
        if stage.terminal:
            title += " (terminal)"
        rows = [f"<tr><td colspan='2' bgcolor='#eeeeee'>{title}</td></tr>"]
        if stage.description:
            rows.append(f"<tr><td colspan='2'><i>{_text(stage.description, 40)}</i></td></tr>")
        if parameters != "none":
            keys = [k for k in compiled.parameters if parameters == "all" or k not in constant]
            for key in keys:
                rows.append(
                    f"<tr><td align='left'>{_text(key)}</td>"
                    f"<td align='left'>{_text(_value(compiled.parameters[key]))}</td></tr>"
                )
        for policy in compiled.policies:
            rows.append(
                f"<tr><td colspan='2' align='left'><font color='#555555'>policy "
                f"{_text(policy.policy.name)}: {_text(policy.policy.description, 40)}"
                f"</font></td></tr>"
            )
        table = (
            f"<table border='{border}' cellborder='0' cellspacing='0' cellpadding='3'>"
            + "".join(rows)
            + "</table>"
        )
        lines.append(f"  {_id(name)} [label=<{table}>];")
    for name in names:
        automatic = 0
        for compiled_rule in stages[name].rules:
            rule = compiled_rule.rule
            manual = rule.trigger == "manual"
            if not manual:
                automatic += 1
            colour = COLOURS.get(rule.decision, "#333333")
            heading = "manual" if manual else f"{automatic}. {rule.decision}"
            label = f"<b>{_text(heading)}</b>: {_text(rule.description, 38)}"
            if compiled_rule.condition is not None:
                label += (
                    f"<br/><font point-size='8' color='#555555'>"
                    f"{_text(compiled_rule.condition.text, 48)}</font>"
                )
            style = "dashed" if manual else "solid"
            lines.append(
                f'  {_id(name)} -> {_id(rule.to)} [label=<{label}>, color="{colour}", '
                f'fontcolor="{colour}", style={style}];'
            )
    if parameters == "differing" and constant:
        shared = "".join(
            f"<tr><td align='left'>{_text(k)}</td><td align='left'>"
            f"{_text(_value(next(iter(stages.values())).parameters[k]))}</td></tr>"
            for k in sorted(constant)
        )
        lines.append(
            "  constant_parameters [label=<<table border='1' cellborder='0' cellspacing='0' "
            "cellpadding='2'><tr><td colspan='2' bgcolor='#eeeeee'><b>same at every stage"
            f"</b></td></tr>{shared}</table>>];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_available() -> bool:
    """Whether graphviz's ``dot`` is on the PATH."""
    return shutil.which("dot") is not None


def to_svg(curriculum: CompiledCurriculum, parameters: ParameterMode = "differing") -> bytes:
    """The diagram as SVG, drawn by graphviz's ``dot``.

    Raises:
        RenderError: when ``dot`` is missing or fails.
    """
    dot = shutil.which("dot")
    if dot is None:
        raise RenderError(
            "graphviz's `dot` is not installed (Debian: apt-get install graphviz); "
            "`shaping curriculum render --format dot` writes the graph without it"
        )
    source = to_dot(curriculum, parameters)
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
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
