"""What changed between two versions of a curriculum, and the version bump that implies.

The bump follows mtrain's semantic versioning, made precise:

- **major**: the stages or the transition logic changed: a stage added, removed or renamed, the
  start stage, a rule added, removed, reordered, retargeted, its decision, trigger or when it
  is evaluated (``evaluate``: session or trial), or the shape of its condition (other metrics,
  operators or windows). Mice on removed stages need a stage mapping (``migrations`` in the new
  file) to move.
- **minor**: the same stages and logic with other numbers: parameters, thresholds in
  conditions, policies, per-mouse adjustments, the metrics list.
- **patch**: only words changed (descriptions); every mouse moves.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any, Literal

from shaping.services.curricula.engine import CompiledCurriculum, CompiledStage
from shaping.services.curricula.errors import VersionBumpTooSmall
from shaping.services.curricula.model import semver

Bump = Literal["none", "patch", "minor", "major"]
_ORDER: dict[Bump, int] = {"none": 0, "patch": 1, "minor": 2, "major": 3}


@dataclass(frozen=True)
class Change:
    """One difference: what kind of bump it needs and a sentence saying what changed."""

    bump: Bump
    where: str
    what: str

    def __str__(self) -> str:
        return f"[{self.bump}] {self.where}: {self.what}"


@dataclass
class CurriculumDiff:
    """Every change from ``old`` to ``new``, and the bump they imply."""

    old: CompiledCurriculum
    new: CompiledCurriculum
    changes: list[Change] = field(default_factory=list)

    @property
    def required(self) -> Bump:
        """The smallest version bump that admits every change."""
        return max((c.bump for c in self.changes), key=_ORDER.__getitem__, default="none")

    @property
    def actual(self) -> Bump:
        """The bump from the old version number to the new one ('none' if not higher)."""
        return version_bump(self.old.version, self.new.version)

    def check(self) -> None:
        """Refuses a new version whose number does not admit its changes.

        Raises:
            VersionBumpTooSmall: naming the changes that need a bigger bump.
        """
        required, actual = self.required, self.actual
        if self.old.name != self.new.name:
            return
        if _ORDER[actual] < _ORDER[required] or (required != "none" and actual == "none"):
            reasons = "\n".join(f"  {c}" for c in self.changes if c.bump == required)
            raise VersionBumpTooSmall(
                f"{self.new.name}: {self.old.version} -> {self.new.version} is a {actual} bump, "
                f"but the changes need a {required} bump:\n{reasons}"
            )

    def lines(self) -> list[str]:
        """A readable report."""
        head = (
            f"{self.old.name} {self.old.version} -> {self.new.name} {self.new.version}: "
            f"{len(self.changes)} change(s); needs a {self.required} bump, "
            f"the version says {self.actual}"
        )
        return [head, *(f"  {c}" for c in self.changes)]


def version_bump(old: str, new: str) -> Bump:
    """Which part of the version went up (``none`` when the new one is not higher)."""
    a, b = semver(old), semver(new)
    if b <= a:
        return "none"
    if b[0] > a[0]:
        return "major"
    if b[1] > a[1]:
        return "minor"
    return "patch"


class _Shape(ast.NodeTransformer):
    """A condition with its numbers blanked out: equal shapes differ only in thresholds."""

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return ast.copy_location(ast.Name(id="N", ctx=ast.Load()), node)
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        return node  # slice bounds (how many sessions) are logic, not thresholds

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        return node  # a trial window is logic too


def _shape(text: str | None) -> str:
    if text is None:
        return ""
    tree = ast.parse(text, mode="eval")
    return ast.dump(_Shape().visit(tree))


def diff(old: CompiledCurriculum, new: CompiledCurriculum) -> CurriculumDiff:
    """Compares two curricula (normally two versions of one)."""
    result = CurriculumDiff(old, new)
    add = result.changes.append
    if old.name != new.name:
        add(Change("major", "curriculum", f"name {old.name!r} -> {new.name!r}"))
    if old.first_stage != new.first_stage:
        add(Change("major", "curriculum", f"start stage {old.first_stage} -> {new.first_stage}"))
    for name in old.stages:
        if name not in new.stages:
            add(Change("major", f"stage {name}", "removed"))
    for name in new.stages:
        if name not in old.stages:
            add(Change("major", f"stage {name}", "added"))
    common = [n for n in old.stages if n in new.stages]
    if [n for n in old.stage_names if n in common] != [n for n in new.stage_names if n in common]:
        add(Change("major", "curriculum", "stage order changed"))
    for name in common:
        _diff_stage(old.stages[name], new.stages[name], add)
    if old.description != new.description:
        add(Change("patch", "curriculum", "description changed"))
    old_metrics, new_metrics = _metrics(old), _metrics(new)
    if old_metrics != new_metrics:
        add(Change("minor", "curriculum", f"metrics {old_metrics} -> {new_metrics}"))
    if old.document.adjustable != new.document.adjustable:
        add(Change("minor", "curriculum", "per-mouse adjustments changed"))
    return result


def _metrics(curriculum: CompiledCurriculum) -> list[str]:
    return sorted(m if isinstance(m, str) else m.name for m in curriculum.document.metrics)


def _diff_stage(old: CompiledStage, new: CompiledStage, add: Any) -> None:
    where = f"stage {old.stage.name}"
    if old.stage.terminal != new.stage.terminal:
        add(Change("major", where, f"terminal {old.stage.terminal} -> {new.stage.terminal}"))
    old_rules = {r.rule.name: r for r in old.rules}
    new_rules = {r.rule.name: r for r in new.rules}
    for name in old_rules.keys() - new_rules.keys():
        add(Change("major", where, f"rule {name} removed"))
    for name in new_rules.keys() - old_rules.keys():
        add(Change("major", where, f"rule {name} added"))
    common = [n for n in old_rules if n in new_rules]
    if common != [n for n in new_rules if n in old_rules]:
        add(Change("major", where, "rule order changed (the first rule that holds wins)"))
    for name in common:
        a, b = old_rules[name].rule, new_rules[name].rule
        rule_where = f"{where}, rule {name}"
        for attribute in ("to", "decision", "trigger", "evaluate"):
            if getattr(a, attribute) != getattr(b, attribute):
                add(
                    Change(
                        "major",
                        rule_where,
                        f"{attribute} {getattr(a, attribute)} -> {getattr(b, attribute)}",
                    )
                )
        old_condition, new_condition = old_rules[name].condition, new_rules[name].condition
        old_when = old_condition.text if old_condition is not None else None
        new_when = new_condition.text if new_condition is not None else None
        if old_when != new_when:
            bump: Bump = "minor" if _shape(old_when) == _shape(new_when) else "major"
            add(Change(bump, rule_where, f"condition {old_when} -> {new_when}"))
        if a.description != b.description:
            add(Change("patch", rule_where, "description changed"))
    for key in sorted(old.parameters.keys() | new.parameters.keys()):
        before, after = old.parameters.get(key, "<unset>"), new.parameters.get(key, "<unset>")
        if before != after or type(before) is not type(after):
            add(Change("minor", where, f"parameter {key}: {before!r} -> {after!r}"))
    old_policies = [p.policy.model_dump() for p in old.policies]
    new_policies = [p.policy.model_dump() for p in new.policies]
    if old_policies != new_policies:
        add(Change("minor", where, "in-stage policies changed"))
    if old.adjustable != new.adjustable:
        add(Change("minor", where, "per-mouse adjustments changed"))
    if old.stage.description != new.stage.description:
        add(Change("patch", where, "description changed"))
