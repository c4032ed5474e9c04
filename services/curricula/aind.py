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
``metrics.session_total`` keeps its name and meaning: AIND sets it to the session's number
(``session_total=session``), and so does Shaping's ``session_total`` (a session table's
``session`` column; on the event path the count of the mouse's sessions, which is the number
of the assignment the rig ran), so sessions 1-7 then 10 make the last one session 10.

Parameter types: AIND publishes JSON Schemas of its curricula next to them
(``DynamicForagingCurriculum_v1.0.json``, ``DummyTaskCurriculum_v1.0.json``), whose ``$defs``
give the type of every task parameter (``...Paras``). The importer picks the schema a
curriculum follows (:func:`choose_schema`): among the schemas beside the file (or the one
given), those for the curriculum's ``curriculum_schema_version``, and of those the one that
declares most of its parameters. It checks every stage's parameters against it (type, enum,
bounds, required, no undeclared parameter when the schema forbids others), refuses the import
with file, stage and parameter named on a mismatch, and records the types in the converted
curriculum's ``parameter_schema`` (named by the schema's title, version and file), so every
later load, ``shaping curriculum validate`` and per-mouse adjustments check them too. A
curriculum with no matching schema (Coupled Baiting v0.1 follows curriculum schema 0.3, which
AIND did not publish) imports without types, with a warning.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shaping.services.curricula.errors import ImportFailed, Problem, RuleSyntaxError
from shaping.services.curricula.model import ParameterSchema
from shaping.services.curricula.paramtypes import parameter_problems
from shaping.services.curricula.rules import unparse
from shaping.services.domain.metrics import METRICS

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


def convert(
    data: Mapping[str, Any], file: str, parameter_schema: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """Converts a parsed AIND curriculum into a Shaping curriculum document.

    Args:
        data: the parsed AIND JSON.
        file: where it came from, for messages.
        parameter_schema: the types of its task parameters (a ``ParameterSchema`` as plain
            data, see :func:`schema_types`); every stage is checked against them and they are
            recorded in the document. None: no types.

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

    if is_json_schema(data):
        raise ImportFailed(
            [
                Problem(
                    f"this is a JSON Schema ({data.get('title', 'untitled')}) describing AIND "
                    f"curricula and their task parameters, not a curriculum (the importer "
                    f"reads it for the parameter types of the curricula beside it)",
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
    if parameter_schema is not None:
        types = ParameterSchema.model_validate(parameter_schema)
        label = f"{types.name} {types.version or ''}".strip()
        for stage, stage_values in own.items():
            for key, message in parameter_problems(types, stage_values):
                fail(f"parameter {key!r} {message} (JSON Schema {label})", stage)
        notes.append(f"parameter types from JSON Schema {label} ({types.source})")
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
    if parameter_schema is not None:
        document["parameter_schema"] = dict(parameter_schema)
    return document, warnings


def _names_in(condition: str) -> set[str]:
    tree = ast.parse(condition, mode="eval")
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in called}


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportFailed([Problem(f"cannot read {what}: {exc}", str(path))]) from None


def convert_file(
    path: Path, schemas: Sequence[Path] | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """Reads and converts an AIND curriculum JSON file, with the types of its parameters.

    Args:
        path: the AIND curriculum JSON.
        schemas: the JSON Schemas to choose its parameter types from (default: the JSON
            Schemas in the same folder); see :func:`choose_schema`.

    Raises:
        ImportFailed: when the file is unreadable, not JSON, cannot be converted, or its
            parameters do not fit its JSON Schema.
    """
    data = _read_json(path, "AIND JSON")
    if not isinstance(data, dict):
        raise ImportFailed([Problem("an AIND curriculum is a JSON object", str(path))])
    if is_json_schema(data):
        return convert(data, str(path))  # refused, with the reason
    candidates = []
    explicit = schemas is not None
    for schema_path in sorted(path.parent.glob("*.json") if schemas is None else schemas):
        if schema_path.resolve() == path.resolve():
            continue
        try:
            loaded = _read_json(schema_path, "JSON Schema")
        except ImportFailed:
            if explicit:
                raise
            continue  # some other file of the folder
        if is_json_schema(loaded):
            candidates.append((schema_path, loaded))
        elif explicit:
            raise ImportFailed([Problem("not a JSON Schema", str(schema_path))])
    chosen, note = choose_schema(data, candidates, explicit=explicit)
    document, warnings = convert(data, str(path), chosen)
    if note:
        warning = Problem(note, str(path), severity="warning")
        document["origin"]["notes"].append(note)
        warnings = [*warnings, warning]
    return document, warnings


# -- parameter types from AIND's JSON Schemas ---------------------------------------------

_SCHEMA_FILE_VERSION = re.compile(r"_v(\d+(?:\.\d+)*)\.json$")
_JSON_TYPES = ("number", "integer", "boolean", "string")


def is_json_schema(data: Any) -> bool:
    """Whether parsed JSON is a JSON Schema (as AIND publishes beside its curricula)."""
    return isinstance(data, Mapping) and (
        "$defs" in data or "$schema" in data or ("properties" in data and "title" in data)
    )


def _resolve(schema: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any]:
    """A property with its ``$ref`` (``#/$defs/X``) merged in (the property's keys win)."""
    merged = dict(node)
    seen = set()
    while isinstance(merged.get("$ref"), str) and merged["$ref"] not in seen:
        ref = merged.pop("$ref")
        seen.add(ref)
        target: Any = schema
        for part in ref.removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        merged = {**(target if isinstance(target, Mapping) else {}), **merged}
    return merged


def _parameter_type(schema: Mapping[str, Any], node: Mapping[str, Any]) -> dict[str, Any] | None:
    """One property as a ParameterType (plain data), None when it is not a scalar."""
    prop = _resolve(schema, node)
    nullable = False
    variants = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(variants, list):  # pydantic's Optional[X]: anyOf [X, {type: null}]
        options = [_resolve(schema, v) for v in variants if isinstance(v, Mapping)]
        nullable = any(o.get("type") == "null" for o in options)
        others = [o for o in options if o.get("type") != "null"]
        if len(others) != 1:
            return None
        prop = {**others[0], **{k: v for k, v in prop.items() if k not in ("anyOf", "oneOf")}}
    kind = prop.get("type")
    choices = prop.get("enum")
    if "const" in prop:
        choices = [prop["const"]]
    if kind is None and isinstance(choices, list) and choices:
        first = choices[0]
        kind = (
            "boolean"
            if isinstance(first, bool)
            else "integer"
            if isinstance(first, int)
            else "number"
            if isinstance(first, float)
            else "string"
        )
    if kind not in _JSON_TYPES:
        return None
    entry: dict[str, Any] = {"type": kind}
    if isinstance(choices, list):
        entry["choices"] = list(choices)
    for key in ("minimum", "maximum"):
        if isinstance(prop.get(key), int | float) and not isinstance(prop.get(key), bool):
            entry[key] = float(prop[key])
    if nullable:
        entry["nullable"] = True
    text = str(prop.get("title") or prop.get("description") or "").strip()
    if text:
        entry["description"] = text
    return entry


def _parameters_def(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """The definition of a stage's task parameters in an AIND curriculum schema."""
    node = schema.get("properties", {}).get("parameters", {})
    inner = node.get("additionalProperties") if isinstance(node, Mapping) else None
    if not isinstance(inner, Mapping):
        return None
    resolved = _resolve(schema, inner)
    return resolved if isinstance(resolved.get("properties"), Mapping) else None


def schema_types(schema: Mapping[str, Any], file: str | None = None) -> dict[str, Any] | None:
    """The parameter types an AIND curriculum JSON Schema gives (a ``ParameterSchema`` as
    plain data), None when it describes no task parameters.

    ``training_stage`` and ``description`` are left out: the converted curriculum keeps them
    as the stage's name and description, not as parameters.
    """
    definition = _parameters_def(schema)
    if definition is None:
        return None
    types: dict[str, Any] = {}
    for key, node in definition["properties"].items():
        if key in _STAGE_KEYS_NOT_PARAMETERS or not isinstance(node, Mapping):
            continue
        entry = _parameter_type(schema, node)
        if entry is not None:
            types[key] = entry
    for key in definition.get("required", []):
        if key in types:
            types[key]["required"] = True
    if not types:
        return None
    name = Path(file).name if file else None
    match = _SCHEMA_FILE_VERSION.search(name or "")
    result: dict[str, Any] = {"name": str(schema.get("title") or "untitled")}
    if match:
        result["version"] = match.group(1)
    if name:
        result["source"] = name
    result["types"] = types
    if definition.get("additionalProperties") is False:
        result["additional"] = False
    return result


def _schema_version(schema: Mapping[str, Any]) -> str | None:
    node = schema.get("properties", {}).get("curriculum_schema_version", {})
    if not isinstance(node, Mapping):
        return None
    value = node.get("const", node.get("default"))
    return None if value is None else str(value)


def choose_schema(
    data: Mapping[str, Any],
    candidates: Sequence[tuple[Path, Mapping[str, Any]]],
    explicit: bool = False,
) -> tuple[dict[str, Any] | None, str]:
    """The parameter types an AIND curriculum follows, chosen among JSON Schemas.

    A schema fits when it is for the curriculum's ``curriculum_schema_version`` (its
    ``const``); among those, the one that declares most of the curriculum's parameter names
    wins, and it must declare at least half of them (a schema of another task declares few).
    A schema given explicitly (``explicit``) is used even for another schema version.

    Returns:
        The types (plain data, see :func:`schema_types`) or None, and a note saying why none
        was chosen or what does not match ("" when all is well).
    """
    version = data.get("curriculum_schema_version")
    keys: set[str] = set()
    for values in (data.get("parameters") or {}).values():
        if isinstance(values, Mapping):
            keys.update(k for k in values if k not in _STAGE_KEYS_NOT_PARAMETERS)
    scored = []
    notes = []
    for path, schema in candidates:
        types = schema_types(schema, str(path))
        if types is None:
            continue
        wanted = _schema_version(schema)
        if version is not None and wanted is not None and str(version) != wanted:
            if not explicit:
                continue
            notes.append(
                f"{path.name} is for curriculum schema {wanted}, the curriculum says {version}"
            )
        scored.append((len(keys & set(types["types"])), path.name, types))
    scored.sort(key=lambda item: item[0], reverse=True)
    if explicit and scored:
        return scored[0][2], "; ".join(notes)
    if not scored or scored[0][0] * 2 < max(len(keys), 1):
        return None, (
            f"no JSON Schema for AIND curriculum schema {version} was found beside it: "
            f"parameter types are not checked"
        )
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        return None, (
            f"JSON Schemas {scored[0][1]} and {scored[1][1]} fit equally: parameter types are "
            f"not checked (name one with --schema)"
        )
    return scored[0][2], ""
