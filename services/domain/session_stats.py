"""Per-session sufficient statistics: what one trial adds to its session, kept small.

Every metric Shaping computes from trial events reads these statistics, never the events: a
trial updates its session's :class:`SessionStats` (counts per outcome, per signed contrast and
block, easy-trial counts, d' counts, the reaction times medians need, and one character per
trial for rolling trial windows), and the SessionEnded turns them into a
:class:`~services.domain.state.SessionRecord`. A metric value at a decision is then a pure
function of the records (plus the state's counters), which is what lets a late session be
recomputed (docs/recompute.md).

Conventions (IBL's, ibllib ``brainbox.behavior.training``):

- signed contrast = (contrast_right - contrast_left) * 100, a missing contrast counting as 0;
- a trial is easy when |signed contrast| >= 50;
- a rightward choice is ``response_side == "right"`` (IBL ``choice == -1``); the psychometric
  curve is the fraction of rightward choices among *all* trials at a contrast, misses included
  (as ``compute_performance(prob_right=True)`` computes it);
- the block is the trial's ``probability_left`` (None when absent);
- reaction time = ``reaction_time_s`` (IBL: response_times - stimOn_times); a missing one is
  NaN, which medians skip (``numpy.nanmedian``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from shaping.schemas.events import TrialCompleted

EASY_CONTRAST = 50.0
"""|signed contrast| (percent) from which a trial is easy (IBL's perf_easy)."""

RT_DECIMALS = 6
"""Reaction times at 0% contrast are kept to the microsecond (a pooled median moves by less
than 1 us; the state stays small)."""

OUTCOME_CODES = {"correct": "c", "incorrect": "i", "miss": "m"}
"""One character per trial; upper case marks a correction trial."""

SIDE_CODES = {"right": "r", "left": "l"}
"""One character per trial for the response side; ``-`` for none (a miss)."""


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def signed_contrast(parameters: Mapping[str, object]) -> float | None:
    """IBL's signed contrast in percent from a trial's parameters, or None when the trial has
    neither ``contrast_left`` nor ``contrast_right`` (a task without contrasts).

    A missing side counts as 0, as ibllib's ``get_signed_contrast`` replaces NaN by 0.
    """
    left = _number(parameters.get("contrast_left"))
    right = _number(parameters.get("contrast_right"))
    if left is None and right is None:
        return None
    value = ((right or 0.0) - (left or 0.0)) * 100
    return value + 0.0  # no negative zero


def block_key(probability_left: float | None) -> str:
    """The key of a probabilityLeft block in the statistics (``""``: no block)."""
    return "" if probability_left is None else repr(float(probability_left))


def cell_key(block: str, contrast: float) -> str:
    """The key of one (block, signed contrast) cell of the psychometric table."""
    return f"{block}|{contrast!r}"


def parse_cell(key: str) -> tuple[float | None, float]:
    """The (block, signed contrast) of a psychometric-table key."""
    block, _, contrast = key.partition("|")
    return (float(block) if block else None), float(contrast)


class SessionStats(BaseModel):
    """Sufficient statistics of one session's trials.

    Attributes:
        n_trials: trials, misses included.
        n_correct: correct trials.
        n_incorrect: incorrect trials.
        n_miss: missed (no response) trials.
        n_right: responses to the right.
        n_left: responses to the left.
        n_easy: trials with |signed contrast| >= 50.
        n_easy_correct: correct easy trials.
        psych: ``"block|contrast"`` -> [trials, rightward choices] (misses in the trials).
        rt_zero: reaction times (s, to the microsecond) of 0% contrast trials that have one.
        dprime_counts: [left-target trials, hits (correct on them), right-target trials,
            false alarms (incorrect on them)], misses and correction trials excluded.
        outcomes: one character per trial (``c``/``i``/``m``; upper case: a correction trial).
        sides: one character per trial: the response side (``r``/``l``/``-``).
        rts_ms: reaction time per trial in whole milliseconds (None: none).
        detail: whether the per-trial strings are still kept (older records drop them once
            newer ones hold a whole trial window; see :func:`~services.domain.metrics.trim`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_trials: int = 0
    n_correct: int = 0
    n_incorrect: int = 0
    n_miss: int = 0
    n_right: int = 0
    n_left: int = 0
    n_easy: int = 0
    n_easy_correct: int = 0
    psych: dict[str, list[int]] = Field(default_factory=dict)
    rt_zero: list[float] = Field(default_factory=list)
    dprime_counts: list[int] = Field(default_factory=lambda: [0, 0, 0, 0])
    outcomes: str = ""
    sides: str = ""
    rts_ms: list[int | None] = Field(default_factory=list)
    detail: bool = True

    @property
    def n_responded(self) -> int:
        """Correct plus incorrect trials."""
        return self.n_correct + self.n_incorrect

    def add(self, trial: TrialCompleted) -> SessionStats:
        """These statistics with one more trial."""
        outcome = trial.outcome
        correct = outcome == "correct"
        update: dict[str, object] = {
            "n_trials": self.n_trials + 1,
            "n_correct": self.n_correct + correct,
            "n_incorrect": self.n_incorrect + (outcome == "incorrect"),
            "n_miss": self.n_miss + (outcome == "miss"),
        }
        side = trial.response_side if outcome != "miss" else None
        if side == "right":
            update["n_right"] = self.n_right + 1
        elif side == "left":
            update["n_left"] = self.n_left + 1
        code = OUTCOME_CODES[outcome]
        update["outcomes"] = self.outcomes + (code.upper() if trial.correction_trial else code)
        update["sides"] = self.sides + SIDE_CODES.get(side or "", "-")
        rt = _number(trial.reaction_time_s)
        update["rts_ms"] = [*self.rts_ms, None if rt is None else round(rt * 1000)]
        contrast = signed_contrast(trial.trial_parameters)
        if contrast is not None:
            if abs(contrast) >= EASY_CONTRAST:
                update["n_easy"] = self.n_easy + 1
                update["n_easy_correct"] = self.n_easy_correct + correct
            block = block_key(_number(trial.trial_parameters.get("probability_left")))
            key = cell_key(block, contrast)
            cell = self.psych.get(key, [0, 0])
            update["psych"] = {**self.psych, key: [cell[0] + 1, cell[1] + (side == "right")]}
            if contrast == 0 and rt is not None:
                update["rt_zero"] = [*self.rt_zero, round(rt, RT_DECIMALS)]
        if outcome != "miss" and not trial.correction_trial and trial.target_side is not None:
            left, hits, right, false_alarms = self.dprime_counts
            if trial.target_side == "left":
                left, hits = left + 1, hits + correct
            else:
                right, false_alarms = right + 1, false_alarms + (outcome == "incorrect")
            update["dprime_counts"] = [left, hits, right, false_alarms]
        return self.model_copy(update=update)

    def without_detail(self) -> SessionStats:
        """These statistics without the per-trial strings (summaries stay exact)."""
        if not self.detail:
            return self
        return self.model_copy(update={"outcomes": "", "sides": "", "rts_ms": [], "detail": False})
