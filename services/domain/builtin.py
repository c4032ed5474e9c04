"""The built-in example curriculum: three shaping stages and a graduated state.

It exists so the whole event flow can run before a lab writes its own curriculum. Thresholds
are typical of two-alternative forced-choice shaping: move on when the mouse is both accurate
and engaged, fall back when accuracy collapses at the harder stage.
"""

from __future__ import annotations

from services.domain.curriculum import Condition, Curriculum, Rule, Stage

BASIC_NAME = "basic-shaping"
BASIC_VERSION = "0.1.0"

_COMMON = {
    "iti_min_s": 2.0,
    "iti_max_s": 4.0,
    "timeout_s": 8.0,
    "session_minutes": 45,
}


def basic_curriculum() -> Curriculum:
    """Returns the built-in ``basic-shaping`` curriculum.

    Stages:
        ``s1_habituation``: large rewards, long response window, easiest stimuli.
        ``s2_training``: medium rewards and window, harder stimuli.
        ``s3_full_task``: the full task.
        ``graduated``: terminal; the full task continues.
    """

    def accuracy(comparator: str, threshold: float) -> Condition:
        return Condition("accuracy", comparator, threshold, window=200)  # type: ignore[arg-type]

    def trials_at_least(n: int) -> Condition:
        return Condition("session_trials", ">=", n)

    s1 = Stage(
        "s1_habituation",
        {
            **_COMMON,
            "reward_volume_ul": 4.0,
            "response_window_s": 20.0,
            "cue_duration_s": 10.0,
            "difficulty": 0.0,
            "max_trials": 200,
        },
        rules=(
            Rule(
                "engaged_and_accurate",
                "progress",
                "s2_training",
                (accuracy(">=", 0.65), trials_at_least(100)),
                "Accuracy over the last 200 trials is at least 65% and the session had at "
                "least 100 trials.",
            ),
        ),
        description="Learn that the spouts give water.",
    )
    s2 = Stage(
        "s2_training",
        {
            **_COMMON,
            "reward_volume_ul": 3.0,
            "response_window_s": 10.0,
            "cue_duration_s": 5.0,
            "difficulty": 0.3,
            "max_trials": 300,
        },
        rules=(
            Rule(
                "ready_for_full_task",
                "progress",
                "s3_full_task",
                (accuracy(">=", 0.75), trials_at_least(150)),
                "Accuracy over the last 200 trials is at least 75% and the session had at "
                "least 150 trials.",
            ),
        ),
        description="Respond within a shorter window to harder stimuli.",
    )
    s3 = Stage(
        "s3_full_task",
        {
            **_COMMON,
            "reward_volume_ul": 2.5,
            "response_window_s": 5.0,
            "cue_duration_s": 2.0,
            "difficulty": 0.6,
            "max_trials": 400,
        },
        rules=(
            Rule(
                "expert",
                "graduate",
                "graduated",
                (
                    accuracy(">=", 0.8),
                    trials_at_least(200),
                    Condition("sessions_at_stage", ">=", 2),
                ),
                "Accuracy over the last 200 trials is at least 80%, the session had at least "
                "200 trials, and the mouse has done at least 2 sessions at this stage.",
            ),
            Rule(
                "accuracy_collapsed",
                "rollback",
                "s2_training",
                (accuracy("<", 0.6),),
                "Accuracy over the last 200 trials fell below 60%.",
            ),
        ),
        description="The full task.",
    )
    graduated = Stage(
        "graduated",
        dict(s3.parameters),
        terminal=True,
        description="Trained; keeps running the full task.",
    )
    return Curriculum(
        BASIC_NAME,
        BASIC_VERSION,
        (s1, s2, s3, graduated),
        description="Built-in three-stage shaping curriculum for a two-choice task.",
    )
