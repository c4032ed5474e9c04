"""One fixed example of every event and command type, for golden-bytes and contract tests."""

from __future__ import annotations

from datetime import UTC, datetime

from shaping.schemas.commands import (
    AdjustParameters,
    Command,
    EjectMouse,
    EnrolMouse,
    MigrateMouse,
    OverrideStage,
)
from shaping.schemas.events import (
    AssignmentIssued,
    CurriculumPublished,
    Event,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    MovementDetected,
    Observation,
    ParametersAdjusted,
    RuleEvaluation,
    SessionEnded,
    SessionStarted,
    SessionSummary,
    StageOverridden,
    StageTransitioned,
    TrainingWarning,
    TrialCompleted,
)

AT = datetime(2026, 3, 2, 9, 30, 15, 250000, tzinfo=UTC)
ENVELOPE = {
    "mouse_id": "M042",
    "rig_id": "rig-3",
    "session_id": "M042-20260302T0930",
    "occurred_at": AT,
    "causation_id": "11111111-2222-4333-8444-555555555555",
}
PARAMS = {
    "reward_volume_ul": 2.5,
    "max_trials": 400,
    "sound_on": True,
    "cue": "led",
    "spout_offset_mm": None,
}


def example_events() -> dict[str, Event]:
    """Every event type with every field set to a telling value."""
    evidence = RuleEvaluation(
        rule="expert",
        description="Accuracy over the last 200 trials is at least 80%.",
        decision="graduate",
        to_stage="graduated",
        verdict=True,
        observations=[
            Observation(
                metric="accuracy(window=200)",
                observed=0.85,
                comparator=">=",
                threshold=0.8,
                passed=True,
            ),
            Observation(
                metric="session_trials", observed=None, comparator=">=", threshold=200, passed=False
            ),
        ],
    )
    return {
        "MouseEnrolled": MouseEnrolled(
            event_id="00000000-0000-4000-8000-000000000001",
            **ENVELOPE,
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            start_stage="s2_training",
            enrolled_by="ada",
            notes="cohort 7",
        ),
        "SessionStarted": SessionStarted(
            event_id="00000000-0000-4000-8000-000000000002",
            **ENVELOPE,
            stage="s3_full_task",
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            parameters=PARAMS,
            assignment_id="00000000-0000-4000-8000-0000000000aa",
            session_date="2026-03-02",
        ),
        "TrialCompleted": TrialCompleted(
            event_id="00000000-0000-4000-8000-000000000003",
            **ENVELOPE,
            trial_index=17,
            outcome="incorrect",
            target_side="left",
            response_side="right",
            reaction_time_s=0.734,
            reward_volume_ul=0.0,
            correction_trial=True,
            trial_parameters={"cue_duration_s": 7.5, "spout_position": 3},
        ),
        "SessionEnded": SessionEnded(
            event_id="00000000-0000-4000-8000-000000000004",
            **ENVELOPE,
            n_trials=412,
            end_reason="time_limit",
            duration_s=2700.5,
            metrics={"foraging_efficiency": 0.734, "peak_dprime": None},
        ),
        "MovementDetected": MovementDetected(
            event_id="00000000-0000-4000-8000-000000000008",
            **ENVELOPE,
            movement="paw_lift",
            side="right",
            phase="iti",
            trial_index=18,
            restarted_iti=True,
        ),
        "StageTransitioned": StageTransitioned(
            event_id="00000000-0000-4000-8000-000000000005",
            **ENVELOPE,
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            from_stage="s3_full_task",
            to_stage="graduated",
            decision="graduate",
            rule="expert",
            rule_evaluations=[evidence],
            sessions_at_stage=3,
            session_total=9,
            session_summary=SessionSummary(
                n_trials=412,
                n_correct=300,
                n_incorrect=60,
                n_miss=52,
                accuracy=300 / 360,
                duration_s=2700.5,
                end_reason="time_limit",
            ),
            supersedes="00000000-0000-4000-8000-0000000000bb",
            session_date="2026-03-02",
            metrics={"psych_bias": 4.04, "rt_zero_contrast": None},
        ),
        "AssignmentIssued": AssignmentIssued(
            event_id="00000000-0000-4000-8000-000000000006",
            **ENVELOPE,
            stage="graduated",
            parameters=PARAMS,
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            reason="graduate",
            reason_detail="graduate to graduated: accuracy held.",
            sessions_at_stage=0,
            session_number=10,
            evidence=[evidence],
            metrics={"psych_bias": 4.04, "rt_zero_contrast": None},
            supersedes="00000000-0000-4000-8000-0000000000cc",
            adjustments={"max_trials": 400, "sound_on": None},
            warnings=["Still in training after 30 sessions: untrainable at 40."],
        ),
        "TrainingWarning": TrainingWarning(
            event_id="00000000-0000-4000-8000-00000000000b",
            **ENVELOPE,
            kind="untrainable_risk",
            message="Still in training after 30 sessions: untrainable at 40.",
            stage="in training",
            curriculum_name="ibl",
            curriculum_version="1.0.0",
            evidence=[evidence],
        ),
        "StageOverridden": StageOverridden(
            event_id="00000000-0000-4000-8000-00000000000c",
            **ENVELOPE,
            to_stage="s2_training",
            from_stage="s3_full_task",
            reason="lost weight; easier stage for two days",
            overridden_by="ada",
        ),
        "MouseEjected": MouseEjected(
            event_id="00000000-0000-4000-8000-00000000000d",
            **ENVELOPE,
            reason="health: end of experiment",
            ejected_by="ada",
        ),
        "ParametersAdjusted": ParametersAdjusted(
            event_id="00000000-0000-4000-8000-00000000000e",
            **ENVELOPE,
            adjustments={"max_trials": 300, "session_minutes": None},
            reason="tires after 300 trials",
            adjusted_by="ada",
        ),
        "CurriculumPublished": CurriculumPublished(
            event_id="00000000-0000-4000-8000-000000000009",
            mouse_id="curriculum:basic-shaping",
            occurred_at=AT,
            curriculum_name="basic-shaping",
            curriculum_version="0.2.0",
            content_hash="sha256:" + "ab" * 32,
            content='{"name":"basic-shaping","stages":[{"name":"s1"}],"version":"0.2.0"}',
            previous_version="0.1.0",
            bump="minor",
            published_by="ada",
            notes="easier first stage",
        ),
        "MouseMigrated": MouseMigrated(
            event_id="00000000-0000-4000-8000-00000000000a",
            **ENVELOPE,
            curriculum_name="basic-shaping",
            from_version="0.1.0",
            to_version="1.0.0",
            from_stage="s2_training",
            to_stage="s2_practice",
            content_hash="sha256:" + "cd" * 32,
            reason="major version: stage mapping s2_training -> s2_practice",
            migrated_by="ada",
        ),
        "EventRejected": EventRejected(
            event_id="00000000-0000-4000-8000-000000000007",
            **ENVELOPE,
            reason="trial for session 'x', which never started",
            error_kind="impossible",
            source_topic="shaping.events",
            source_partition=2,
            source_offset=12345678901,
            original_key=b"M042",
            original_value=b"\xc3\x01\x00garbage",
            rejected_by="processor",
            original_size=70_000,
            original_sha256="ef" * 32,
        ),
    }


COMMAND_ENVELOPE = {"mouse_id": "M042", "requested_by": "ada", "requested_at": AT}


def example_commands() -> dict[str, Command]:
    """Every command type with every field set to a telling value."""
    return {
        "EnrolMouse": EnrolMouse(
            command_id="00000000-0000-4000-9000-000000000001",
            **COMMAND_ENVELOPE,
            rig_id="rig-3",
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            start_stage="s2_training",
            notes="cohort 7",
        ),
        "OverrideStage": OverrideStage(
            command_id="00000000-0000-4000-9000-000000000002",
            **COMMAND_ENVELOPE,
            to_stage="s2_training",
            from_stage="s3_full_task",
            reason="lost weight; easier stage for two days",
        ),
        "EjectMouse": EjectMouse(
            command_id="00000000-0000-4000-9000-000000000003",
            **COMMAND_ENVELOPE,
            reason="end of experiment",
        ),
        "AdjustParameters": AdjustParameters(
            command_id="00000000-0000-4000-9000-000000000004",
            **COMMAND_ENVELOPE,
            adjustments={"max_trials": 300, "reward_volume_ul": 2.5, "cue": "led", "x": None},
            reason="tires early",
        ),
        "MigrateMouse": MigrateMouse(
            command_id="00000000-0000-4000-9000-000000000005",
            **COMMAND_ENVELOPE,
            curriculum_name="basic-shaping",
            from_version="0.1.0",
            to_version="1.0.0",
            from_stage="s2_training",
            to_stage="s2_practice",
            content_hash="sha256:" + "cd" * 32,
            reason="major version: stage mapping s2_training -> s2_practice",
        ),
    }
