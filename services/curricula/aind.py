"""Import of AIND auto-train curricula (``aind-auto-train``'s JSON export).

An AIND curriculum JSON has ``curriculum_name``, ``curriculum_version``,
``curriculum_description``, ``parameters`` (task parameters per stage, keyed by stage) and
``curriculum`` (per stage, ordered ``transition_rules`` with ``decision``, ``to_stage``,
``condition`` and ``condition_description``). Conditions are Python lambdas as strings, e.g.::

    lambda metrics: metrics.finished_trials[-1] >= 200
                    and np.mean(metrics.foraging_efficiency[-5:]) >= 0.7

AIND's engine ``eval``'s them when a mouse is evaluated, so a broken one fails only then. Here
each is parsed with :mod:`ast` (never run), translated into the rule language
(``metrics.x`` -> ``x``, ``np.mean`` -> ``mean``, ``session_at_current_stage`` ->
``sessions_at_stage``) and checked with every other rule when the converted curriculum loads.

Conversions worth knowing: AIND versions such as ``2.2.1rwdDelay159`` are not semantic
versions, so the suffix becomes part of the name (``Uncoupled Without Baiting rwdDelay159``,
version ``2.2.1``) and the original is kept in ``origin``; the ``Graduated`` stage, which AIND
treats as absorbing, becomes a terminal stage; each stage keeps AIND's enum name
(``STAGE_1_WARMUP``) as an alias; parameters shared by every stage become ``defaults``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.curricula.errors import ImportFailed, Problem, RuleSyntaxError
from services.curricula.rules import unparse
from services.domain.metrics import METRICS

METRIC_NAMES = {"session_at_current_stage": "sessions_at_stage"}
"""AIND metric names that Shaping calls otherwise (same meaning)."""

NUMPY_FUNCTIONS = {"mean", "min", "max", "sum"}
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")
_STAGE_KEYS_NOT_PARAMETERS = ("training_stage", "description")


def looks_like_aind(data: Any) -> bool:
    """Whether parsed JSON is an AIND curriculum export."""
    return isinstance(data, dict) and "curriculum_name" in data and "curriculum" in data


def stage_alias(stage: str) -> str:
    """AIND's enum name of a stage: ``Stage 1 w/warmup`` -> ``STAGE_1_WARMUP``."""
    text = stage.replace(" w/", " ").replace("/", " ")
    return "_".join(text.upper().split())


def translate_condition(source: str) -> str:
    """Translates an AIND lambda condition into the rule language, without running it.

    Raises:
        RuleSyntaxError: when the text is not a one-argument lambda or uses anything beyond
            ``metrics.<name>`` and ``np.mean/min/max/sum``.
    """
    text = " ".join(source.split())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        opened, closed = text.count("("), text.count(")")
        reason = (
            f"unbalanced parentheses ({opened} opened, {closed} closed)"
            if opened != closed
            else exc.msg
        )
        raise RuleSyntaxError(f"syntax error: {reason}", exc.offset) from None
    lam = tree.body
    if not isinstance(lam, ast.Lambda) or len(lam.args.args) != 1 or _has_other_args(lam.args):
        raise RuleSyntaxError("an AIND condition must be 'lambda metrics: <expression>'", 1)
    argument = lam.args.args[0].arg
    body = _Translator(argument).visit(lam.body)
    return unparse(body)


def _has_other_args(args: ast.arguments) -> bool:
    return bool(args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg or args.defaults)


class _Translator(ast.NodeTransformer):
    """``metrics.x`` -> ``x``; ``np.mean(...)`` -> ``mean(...)``; anything else attribute-like
    is refused."""

    def __init__(self, argument: str) -> None:
        self.argument = argument

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("np", "numpy")
        ):
            if func.attr not in NUMPY_FUNCTIONS:
                raise RuleSyntaxError(
                    f"numpy function {func.attr!r} is not supported (mean, min, max, sum are)",
                    node.col_offset + 1,
                )
            node.func = ast.copy_location(ast.Name(id=func.attr, ctx=ast.Load()), func)
        node.args = [self.visit(a) for a in node.args]
        node.keywords = [self.visit(k) for k in node.keywords]
        if isinstance(node.func, ast.Attribute):
            node.func = self.visit(node.func)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == self.argument:
            name = METRIC_NAMES.get(node.attr, node.attr)
            return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)
        raise RuleSyntaxError(
            f"{ast.unparse(node)} is not understood: conditions read {self.argument}.<metric> "
            f"and call np.mean/min/max/sum",
            node.col_offset + 1,
        )

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == self.argument:
            raise RuleSyntaxError(
                f"{self.argument} must be followed by a metric name ({self.argument}.x)",
                node.col_offset + 1,
            )
        return node


def _version(raw: str) -> tuple[str, str]:
    """(semantic version, suffix) of an AIND version: ``2.2.1rwdDelay159`` -> 2.2.1, rwd..."""
    match = _VERSION.match(raw.strip())
    if match is None:
        raise ValueError(f"version {raw!r} does not start with MAJOR.MINOR")
    major, minor, patch, suffix = match.groups()
    return f"{int(major)}.{int(minor)}.{int(patch or 0)}", suffix.strip(" ._-")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def convert(data: Mapping[str, Any], file: str) -> tuple[dict[str, Any], list[Problem]]:
    """Converts a parsed AIND curriculum into a Shaping curriculum document.

    Returns:
        The document (plain data, ready to dump as YAML) and warnings about what the
        conversion met.

    Raises:
        ImportFailed: with every problem (stage and rule named) when it cannot be converted.
    """
    problems: list[Problem] = []
    warnings: list[Problem] = []

    def fail(message: str, stage: str | None = None, rule: str | None = None) -> None:
        problems.append(Problem(message, file, None, stage, rule))

    if "$defs" in data or ("properties" in data and "title" in data):
        raise ImportFailed(
            [
                Problem(
                    f"this is a JSON Schema ({data.get('title', 'untitled')}) describing AIND "
                    f"curricula and their task parameters, not a curriculum",
                    file,
                )
            ]
        )
    for key in ("curriculum_name", "curriculum_version", "parameters", "curriculum"):
        if key not in data:
            fail(f"missing {key!r}: not an AIND curriculum export")
    if problems:
        raise ImportFailed(problems)
    try:
        version, suffix = _version(str(data["curriculum_version"]))
    except ValueError as exc:
        raise ImportFailed([Problem(str(exc), file)]) from None
    name = str(data["curriculum_name"]) + (f" {suffix}" if suffix else "")
    parameters: dict[str, Mapping[str, Any]] = dict(data["parameters"])
    transitions: Mapping[str, Any] = data["curriculum"]
    notes = [f"converted from AIND curriculum schema {data.get('curriculum_schema_version')}"]
    # AIND's Graduated is always a stage (absorbing); older exports give it no parameters.
    for stage, block in transitions.items():
        for raw in block.get("transition_rules", []) if isinstance(block, Mapping) else []:
            target = raw.get("to_stage")
            if (
                isinstance(target, str)
                and target.lower() == "graduated"
                and target not in parameters
                and stage in parameters
            ):
                parameters[target] = parameters[stage]
                notes.append(f"{target} had no parameters: it keeps those of {stage}")
    stage_names = list(parameters)
    for stage in transitions:
        if stage not in parameters:
            fail("has transition rules but no parameters", stage)

    # Parameters shared by every stage are written once, as defaults.
    own = {
        stage: {k: v for k, v in values.items() if k not in _STAGE_KEYS_NOT_PARAMETERS}
        for stage, values in parameters.items()
    }
    shared_keys = set.intersection(*(set(v) for v in own.values())) if own else set()
    first = next(iter(own.values()), {})
    defaults = {
        k: first[k]
        for k in first
        if k in shared_keys and all(v[k] == first[k] for v in own.values())
    }
    used_metrics: set[str] = set()
    stages = []
    for stage in stage_names:
        values = parameters[stage]
        if not isinstance(values, Mapping):
            fail("parameters must be an object", stage)
            continue
        entry: dict[str, Any] = {"name": stage}
        if values.get("description"):
            entry["description"] = str(values["description"])
        entry["aliases"] = [stage_alias(stage)]
        entry["parameters"] = {k: v for k, v in own[stage].items() if k not in defaults}
        block = transitions.get(stage)
        if block is None:
            if stage.lower() == "graduated":
                entry["terminal"] = True
            stages.append(entry)
            continue
        if block.get("from_stage") not in (None, stage):
            warnings.append(
                Problem(
                    f"from_stage says {block['from_stage']!r} but the rules are listed under "
                    f"{stage!r}; the key wins, as in AIND's engine",
                    file,
                    None,
                    stage,
                    severity="warning",
                )
            )
        rules = []
        names: dict[str, int] = {}
        for position, raw in enumerate(block.get("transition_rules", [])):
            decision = raw.get("decision")
            target = raw.get("to_stage")
            base = f"{decision}_to_{_slug(str(target))}"
            names[base] = names.get(base, 0) + 1
            rule_name = base if names[base] == 1 else f"{base}_{names[base]}"
            label = f"{rule_name} (#{position + 1})"
            if decision not in ("progress", "rollback"):
                fail(f"decision {decision!r} is not progress or rollback", stage, label)
                continue
            if target not in parameters:
                fail(f"goes to unknown stage {target!r}", stage, label)
                continue
            try:
                condition = translate_condition(str(raw.get("condition", "")))
            except RuleSyntaxError as exc:
                where = f" at column {exc.column}" if exc.column else ""
                fail(
                    f"condition cannot be translated: {exc.message}{where} in: "
                    f"{' '.join(str(raw.get('condition', '')).split())}",
                    stage,
                    label,
                )
                continue
            used_metrics.update(_names_in(condition))
            description = str(raw.get("condition_description") or "").strip()
            rules.append(
                {
                    "name": rule_name,
                    "decision": decision,
                    "to": target,
                    "when": condition,
                    "description": description or f"When {condition}.",
                }
            )
        entry["rules"] = rules
        stages.append(entry)
    if problems:
        raise ImportFailed(problems + warnings)
    metrics: list[Any] = []
    for metric in sorted(used_metrics):
        if metric in METRICS:
            metrics.append(metric)
        else:
            metrics.append(
                {
                    "name": metric,
                    "kind": "session",
                    "description": f"AIND metric {metric}, reported per session.",
                }
            )
    if suffix:
        notes.append(
            f"AIND version {data['curriculum_version']!r}: suffix {suffix!r} moved to the name"
        )
    notes.extend(w.message for w in warnings)
    document: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": str(data.get("curriculum_description") or ""),
        "metrics": metrics,
        "defaults": defaults,
        "stages": stages,
        "origin": {
            "system": "aind",
            "file": Path(file).name,
            "name": str(data["curriculum_name"]),
            "version": str(data["curriculum_version"]),
            "notes": notes,
        },
    }
    return document, warnings


def _names_in(condition: str) -> set[str]:
    tree = ast.parse(condition, mode="eval")
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in called}


def convert_file(path: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Reads and converts an AIND curriculum JSON file.

    Raises:
        ImportFailed: when the file is unreadable, not JSON, or cannot be converted.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportFailed([Problem(f"cannot read AIND JSON: {exc}", str(path))]) from None
    if not isinstance(data, dict):
        raise ImportFailed([Problem("an AIND curriculum is a JSON object", str(path))])
    return convert(data, str(path))
