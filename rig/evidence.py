"""Why the processor decided what it did, as lines for the person at the rig.

The assignment a rig receives after a session carries the decision's evidence: each rule (or
criterion) the curriculum evaluated with its observed values and pass/fail, the curriculum's
reported metrics, and the warnings raised with the decision. ``shaping rig run`` prints these
lines right after the session and logs them; ``shaping rig status`` prints them again for the
mouse's last decision. Light on purpose (no heavy imports): it runs on a Raspberry Pi.
"""

from __future__ import annotations

from typing import Any

from shaping.schemas.events import DECISIONS, AssignmentIssued, RuleEvaluation, StageTransitioned

EJECTED = "ejected"
"""The reason of the assignment that takes a mouse out of training (rigs refuse to run it)."""


def is_decision(assignment: AssignmentIssued) -> bool:
    """Whether the assignment follows the processor's decision on a session (so it carries
    that decision's evidence), rather than an enrolment or a trainer's intervention."""
    return assignment.reason in DECISIONS


def fmt(value: Any) -> str:
    """A value as shown at the rig: floats to 4 significant digits, None as ``-``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def rule_lines(evaluations: list[RuleEvaluation], indent: str = "  ") -> list[str]:
    """Each rule with its verdict, then each observation with its value and pass/fail."""
    lines = []
    for evaluation in evaluations:
        verdict = "held" if evaluation.verdict else "did not hold"
        lines.append(
            f"{indent}rule {evaluation.rule} ({evaluation.decision} to {evaluation.to_stage}) "
            f"{verdict}: {evaluation.description}"
        )
        for o in evaluation.observations:
            mark = "ok" if o.passed else "no"
            lines.append(
                f"{indent}  [{mark}] {o.metric} = {fmt(o.observed)} {o.comparator} "
                f"{fmt(o.threshold)}"
            )
    return lines


def evidence_lines(
    decision: StageTransitioned | None, assignment: AssignmentIssued | None
) -> list[str]:
    """The decision on a session and everything behind it, one line each.

    Args:
        decision: the StageTransitioned on the session, if it arrived.
        assignment: the assignment that followed it (with the evidence, metrics and warnings
            it carries), if it arrived.
    """
    lines: list[str] = []
    if decision is not None:
        rule = f" (rule {decision.rule})" if decision.rule else ""
        lines.append(
            f"decision: {decision.decision} {decision.from_stage} -> {decision.to_stage}{rule}"
        )
        summary = decision.session_summary
        accuracy = "-" if summary.accuracy is None else f"{summary.accuracy:.0%}"
        lines.append(
            f"  judged: {summary.n_trials} trials, accuracy {accuracy}, session "
            f"{decision.session_total} of the mouse, {decision.sessions_at_stage} at this stage"
        )
    elif assignment is not None:
        lines.append(f"decision: {assignment.reason} -> {assignment.stage}")
    if assignment is not None:
        lines.append(
            f"  status reached: {assignment.stage} ({assignment.curriculum_name} "
            f"{assignment.curriculum_version})"
        )
    evaluations = (
        assignment.evidence
        if assignment is not None and assignment.evidence
        else (decision.rule_evaluations if decision is not None else [])
    )
    lines.extend(rule_lines(list(evaluations)))
    metrics = (
        assignment.metrics
        if assignment is not None and assignment.metrics
        else (decision.metrics if decision is not None else {})
    )
    if metrics:
        shown = ", ".join(f"{name} = {fmt(value)}" for name, value in metrics.items())
        lines.append(f"  metrics: {shown}")
    for warning in assignment.warnings if assignment is not None else []:
        lines.append(f"  WARNING: {warning}")
    if assignment is not None and assignment.adjustments:
        shown = ", ".join(f"{k} = {fmt(v)}" for k, v in assignment.adjustments.items())
        lines.append(f"  per-mouse adjustments: {shown}")
    return lines


def next_session_line(assignment: AssignmentIssued) -> str:
    """What the mouse's next session runs, and why."""
    if assignment.reason == EJECTED:
        return f"no next session: {assignment.reason_detail or 'the mouse was ejected'}"
    return (
        f"next session ({assignment.session_number}): stage {assignment.stage}; "
        f"{assignment.reason_detail or assignment.reason}"
    )
