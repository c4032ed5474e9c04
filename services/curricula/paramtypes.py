"""Parameter types: checking task parameters against a curriculum's ``parameter_schema``.

A curriculum may record the types of its task parameters (:class:`ParameterSchema`; the AIND
importer fills it from AIND's JSON Schemas). Then every stage's resolved parameters are checked
when the curriculum loads (:func:`check_parameter_types`, called by the validator): each value
must have its parameter's type and lie within its choices and bounds, every required parameter
must be set, and, when the schema allows no others, no undeclared parameter may be set. The same
rules judge a trainer's per-mouse adjustments (:func:`value_problem`).

Without a schema, a value is judged by the type of the stage's own value (an integer stays an
integer, a flag a flag); see :func:`same_kind`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shaping.schemas.events import Parameters, ParamValue
from shaping.services.curricula.model import Adjustment, Curriculum, ParameterSchema, ParameterType

Report = Callable[..., None]
"""``report(message, path, stage)``: how the validator records a problem."""


def _equal(a: Any, b: Any) -> bool:
    """Equality that keeps true/false apart from 1/0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_type(value: Any, kind: str) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        # JSON Schema counts 3.0 as an integer.
        return _is_number(value) and float(value).is_integer()
    return _is_number(value)


_ARTICLE = {"number": "a number", "integer": "an integer", "boolean": "true or false"}


def describe(spec: ParameterType) -> str:
    """What a parameter type allows, in words (``an integer >= 1 and <= 10``)."""
    parts = [_ARTICLE.get(spec.type, "a string")]
    if spec.minimum is not None:
        parts.append(f">= {spec.minimum:g}")
    if spec.maximum is not None:
        parts.append(f"<= {spec.maximum:g}")
    text = " ".join(parts[:2]) + "".join(f" and {p}" for p in parts[2:])
    if spec.choices is not None:
        text += f", one of {spec.choices!r}"
    if spec.nullable:
        text += ", or null"
    return text


def value_problem(spec: ParameterType, value: ParamValue | None) -> str | None:
    """Why ``value`` does not fit ``spec`` (None when it fits)."""
    if value is None:
        return None if spec.nullable else f"is null, but must be {describe(spec)}"
    if not _has_type(value, spec.type):
        return f"is {value!r}, but must be {describe(spec)}"
    if spec.choices is not None and not any(_equal(value, c) for c in spec.choices):
        return f"is {value!r}, not one of {spec.choices!r}"
    if _is_number(value):
        number = float(value)
        if spec.minimum is not None and number < spec.minimum:
            return f"is {value!r}, below the minimum {spec.minimum:g}"
        if spec.maximum is not None and number > spec.maximum:
            return f"is {value!r}, above the maximum {spec.maximum:g}"
    return None


def same_kind(value: ParamValue | None, like: ParamValue | None) -> bool:
    """Whether ``value`` has the type of the stage's own value ``like`` (without a schema):
    an integer parameter takes integers, a number takes numbers, a flag takes true/false, a
    string takes strings; a parameter set to null takes anything."""
    if value is None or like is None:
        return True
    if isinstance(like, bool):
        return isinstance(value, bool)
    if isinstance(like, int):
        return _is_number(value) and float(value).is_integer()
    if isinstance(like, float):
        return _is_number(value)
    return isinstance(value, str)


def parameter_problems(schema: ParameterSchema, parameters: Parameters) -> list[tuple[str, str]]:
    """Every way a stage's resolved parameters break the schema: (parameter, message)."""
    found = []
    for key, value in parameters.items():
        spec = schema.types.get(key)
        if spec is None:
            if not schema.additional:
                found.append((key, f"is not a parameter of {schema.name}"))
            continue
        problem = value_problem(spec, value)
        if problem is not None:
            found.append((key, problem))
    for key, spec in schema.types.items():
        if spec.required and key not in parameters:
            found.append((key, f"is required by {schema.name}, but not set"))
    return found


def check_parameter_types(
    document: Curriculum, resolved: Mapping[str, Parameters], report: Report
) -> None:
    """Checks every stage's resolved parameters, and the per-mouse adjustments' limits,
    against the curriculum's parameter schema (nothing to do without one).

    Args:
        document: the curriculum.
        resolved: each stage's resolved parameters, by stage name.
        report: called as ``report(message, path, stage)`` for every problem.
    """
    schema = document.parameter_schema
    if schema is None:
        return
    for index, stage in enumerate(document.stages):
        for key, message in parameter_problems(schema, resolved.get(stage.name, {})):
            own = key in stage.parameters
            where = ("stages", index, "parameters", key) if own else ("stages", index)
            report(f"parameter {key!r} {message}", where, stage.name)
    adjustable: list[tuple[tuple[str | int, ...], str, Adjustment, str | None]] = [
        (("adjustable", k), k, a, None) for k, a in document.adjustable.items()
    ]
    for index, stage in enumerate(document.stages):
        adjustable.extend(
            (("stages", index, "adjustable", k), k, a, stage.name)
            for k, a in stage.adjustable.items()
        )
    for path, key, rule, stage_name in adjustable:
        spec = schema.types.get(key)
        if spec is None:
            continue
        limits = [v for v in (rule.minimum, rule.maximum) if v is not None]
        for value in [*limits, *(rule.choices or [])]:
            problem = value_problem(spec, value)
            if problem is not None:
                report(f"adjustable {key!r}: the allowed value {problem}", path, stage_name)
