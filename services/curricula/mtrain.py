"""Import of mtrain regimens (Allen Institute, Visual Behavior).

An mtrain regimen is YAML::

    name: VisualBehavior_Task1A_v1.0.0      # {Project}_{Task}_v{semver}
    stages:
      0_gratings_autorewards_15min:
        script: change_detection/gratings.py
        parameters: &gratings                # YAML anchors and merge keys share bases
          reward_volume: 0.007
      1_gratings:
        script: change_detection/gratings.py
        parameters:
          <<: *gratings
          free_reward_trials: 10
    transitions:
      - trigger: progress                    # or manual
        source: 1_gratings
        dest: 2_gratings_flashed
        conditions: [two_out_of_three_aint_bad, yesterday_was_good]
        unless: [summer_over]                # optional

A transition becomes a rule of its source stage that holds when every condition holds and no
``unless`` does; its decision is a rollback when it goes to an earlier stage, a progress
otherwise, unless the transition says ``decision:`` itself (a Shaping extension). Conditions are
the named training criteria of AllenSDK/mtrain (:data:`CRITERIA`), a regimen's own
``criteria:`` (name -> rule-language expression), or a rule-language expression written in
place. ``manual`` transitions become manual rules (drawn and counted for reachability, never
evaluated). A stage with no automatic way out is terminal. Parameters are flattened to scalars
(a nested mapping's keys are joined with dots, a list is kept as JSON text) and the stage's
``script`` is kept as a
parameter, so the rig knows what to run.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shaping.services.curricula.errors import (
    CurriculumInvalid,
    ImportFailed,
    Problem,
    RuleSyntaxError,
)
from shaping.services.curricula.loader import read_document
from shaping.services.curricula.rules import Scope, parse_condition, unparse
from shaping.services.domain.metrics import METRICS

CRITERIA: dict[str, tuple[str, str]] = {
    "one_complete": ("sessions_at_stage >= 1", "One session completed at this stage."),
    "two_complete": ("sessions_at_stage >= 2", "Two sessions completed at this stage."),
    "three_complete": ("sessions_at_stage >= 3", "Three sessions completed at this stage."),
    "two_out_of_three_aint_bad": (
        "sum(peak_dprime[-3:] > 2) >= 2",
        "Two of the last three sessions had a peak d' above 2.",
    ),
    "yesterday_was_good": ("peak_dprime > 2", "The last session's peak d' was above 2."),
    "no_response_bias": (
        "0.1 < response_bias < 0.9",
        "The response bias of the last session was between 0.1 and 0.9.",
    ),
    "whole_lot_of_trials": (
        "contingent_trials > 300",
        "The last session had more than 300 contingent trials.",
    ),
    "mostly_useful": (
        "aborted_fraction < 0.5",
        "Fewer than half of the last session's trials were aborted.",
    ),
    "meets_engagement_criteria": (
        "sum(peak_dprime[-3:] > 1) == 3 and sum(engaged_trials[-3:] > 100) == 3",
        "Each of the last three sessions had a peak d' above 1 and more than 100 engaged trials.",
    ),
    "summer_over": ("session_total >= 40", "The mouse has trained for 40 days or more."),
}
"""The named training criteria of mtrain / AllenSDK, in the rule language, with descriptions."""

_NAME = re.compile(r"^(?P<name>.+?)_v(?P<version>\d+\.\d+\.\d+)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def looks_like_mtrain(data: Any) -> bool:
    """Whether a parsed YAML document is an mtrain regimen."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("stages"), dict)
        and isinstance(data.get("transitions"), list)
    )


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


def convert(data: Mapping[str, Any], file: str) -> tuple[dict[str, Any], list[Problem]]:
    """Converts a parsed mtrain regimen into a Shaping curriculum document.

    Raises:
        ImportFailed: naming every transition or stage that cannot be converted.
    """
    problems: list[Problem] = []

    def fail(message: str, stage: str | None = None, rule: str | None = None) -> None:
        problems.append(Problem(message, file, None, stage, rule))

    if not looks_like_mtrain(data):
        raise ImportFailed(
            [Problem("not an mtrain regimen (needs stages: and transitions:)", file)]
        )
    raw_name = str(data.get("name", ""))
    match = _NAME.match(raw_name)
    if match is None:
        raise ImportFailed(
            [Problem(f"name {raw_name!r} is not {{Project}}_{{Task}}_v{{MAJOR.MINOR.PATCH}}", file)]
        )
    own_criteria = data.get("criteria") or {}
    if not isinstance(own_criteria, Mapping):
        raise ImportFailed([Problem("criteria: must map names to expressions", file)])
    order = list(data["stages"])
    stages: dict[str, dict[str, Any]] = {}
    flattened = False
    for name, body in data["stages"].items():
        if not isinstance(body, Mapping):
            fail("a stage must have script and parameters", str(name))
            continue
        parameters = dict(body.get("parameters") or {})
        flat = _flatten(parameters)
        flattened = flattened or flat.keys() != parameters.keys()
        if "script" in body:
            flat = {"script": body["script"], **flat}
        entry: dict[str, Any] = {"name": str(name)}
        if body.get("description"):
            entry["description"] = str(body["description"])
        entry["parameters"] = flat
        entry["rules"] = []
        stages[str(name)] = entry
    scope = Scope(METRICS)
    used: set[str] = set()
    for index, transition in enumerate(data["transitions"]):
        if not isinstance(transition, Mapping):
            fail(f"transition #{index + 1} must be a mapping")
            continue
        source, dest = str(transition.get("source")), str(transition.get("dest"))
        trigger = transition.get("trigger", "progress")
        label = f"#{index + 1} {source} -> {dest}"
        if source not in stages:
            fail(f"transition {label}: unknown source stage", source)
            continue
        if dest not in stages:
            fail(f"goes to unknown stage {dest!r}", source, label)
            continue
        if trigger not in ("progress", "manual"):
            fail(f"trigger {trigger!r} is not progress or manual", source, label)
            continue
        conditions = list(transition.get("conditions") or [])
        unless = list(transition.get("unless") or [])
        parts, texts = [], []
        for position, condition in enumerate(conditions + unless):
            expression, description = _criterion(str(condition), own_criteria)
            if expression is None:
                fail(
                    f"unknown condition {condition!r}: neither an mtrain criterion "
                    f"({', '.join(sorted(CRITERIA))}), nor one of the regimen's criteria, nor "
                    f"an expression",
                    source,
                    label,
                )
                break
            try:
                parsed = parse_condition(expression, scope)
            except RuleSyntaxError as exc:
                fail(f"condition {condition!r}: {exc}", source, label)
                break
            used.update(parsed.metrics)
            negate = position >= len(conditions)
            parts.append(f"not ({expression})" if negate else f"({expression})")
            texts.append(f"unless: {description}" if negate else description)
        else:
            decision = transition.get("decision") or (
                "rollback" if order.index(dest) < order.index(source) else "progress"
            )
            name = "_and_".join(_rule_word(str(c)) for c in conditions) or f"to_{_rule_word(dest)}"
            if unless:
                name += "_unless_" + "_or_".join(_rule_word(str(u)) for u in unless)
            if trigger == "manual":
                name = f"manual_to_{_rule_word(dest)}"
            existing = {r["name"] for r in stages[source]["rules"]}
            base, n = name, 1
            while name in existing:
                n += 1
                name = f"{base}_{n}"
            rule: dict[str, Any] = {"name": name, "decision": decision, "to": dest}
            if trigger == "manual":
                rule["trigger"] = "manual"
                rule["description"] = "An operator moves the mouse by hand" + (
                    f" when: {' '.join(texts)}" if texts else "."
                )
                if parts:
                    rule["when"] = _canonical(" and ".join(parts))
            else:
                rule["when"] = _canonical(" and ".join(parts)) if parts else "True"
                rule["description"] = " ".join(texts) or "After every session."
            stages[source]["rules"].append(rule)
    if problems:
        raise ImportFailed(problems)
    for entry in stages.values():
        if not any(r.get("trigger", "auto") == "auto" for r in entry["rules"]):
            entry["terminal"] = True
    notes = ["converted from an mtrain regimen"]
    if flattened:
        notes.append("nested parameters flattened: mapping keys joined with '.', lists as JSON")
    document: dict[str, Any] = {
        "name": match.group("name"),
        "version": match.group("version"),
        "description": str(data.get("description") or ""),
        "metrics": sorted(used),
        "stages": list(stages.values()),
        "origin": {
            "system": "mtrain",
            "file": Path(file).name,
            "name": raw_name,
            "version": match.group("version"),
            "notes": notes,
        },
    }
    return document, []


def _criterion(name: str, own: Mapping[str, Any]) -> tuple[str | None, str]:
    if name in own:
        value = own[name]
        if isinstance(value, Mapping):
            return str(value.get("when", "")), str(value.get("description") or name)
        return str(value), f"{name}: {value}."
    if name in CRITERIA:
        return CRITERIA[name]
    if _IDENTIFIER.match(name):
        return None, ""
    return name, f"{name}."


def _canonical(expression: str) -> str:
    """The expression without redundant parentheses (it was checked already)."""
    return unparse(ast.parse(expression, mode="eval").body)


def _rule_word(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "condition"


def convert_file(path: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Reads and converts an mtrain regimen YAML file.

    Raises:
        ImportFailed: when the file is unreadable or cannot be converted.
    """
    try:
        data, _ = read_document(path)
    except CurriculumInvalid as exc:
        raise ImportFailed(exc.problems) from None
    return convert(data, str(path))
