"""The projector's SQL tables (SQLAlchemy Core), for SQLite and PostgreSQL alike.

Every table has a natural primary key (ids that come from the events), never an autoincrement
counter, so rebuilding the projection from the log gives identical rows.

Within a row, each group of columns is written by exactly one event type, and every write is an
upsert or an insert-if-absent. Kafka orders messages within one topic-partition only, so the
projector may see a mouse's ``StageTransitioned`` before the ``SessionEnded`` that caused it;
because no column is written by events of two topics, the final rows do not depend on how the
topics interleave. The column comments below name the event type that writes each group.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL keeps the zone (``timestamptz``); SQLite stores text without one and hands back
    naive datetimes. Converting to UTC before writing and re-attaching UTC when reading makes both
    return equal, aware values, and keeps SQLite's text comparisons chronological.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Converts an aware timestamp to UTC; refuses naive ones (their zone is a guess)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive timestamp {value!r}: the projector stores UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Returns the stored timestamp as an aware UTC datetime."""
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()
"""Every table the projector owns; ``create_all`` / ``drop_all`` on it build or reset them."""

mouse_status = Table(
    "mouse_status",
    metadata,
    Column("mouse_id", String, primary_key=True),
    # From the newest AssignmentIssued (by processing order: the last one applied).
    Column("curriculum_name", String),
    Column("curriculum_version", String),
    Column("stage", String),
    Column("parameters_json", Text),
    Column("sessions_at_stage", Integer),
    Column("next_session_number", Integer),
    Column("last_reason", String),
    Column("assignment_id", String),
    Column("assigned_at", UtcDateTime),
    # From the newest MouseEnrolled (by processing order).
    Column("enrolled_at", UtcDateTime),
    Column("enrolled_by", String),
    # From the newest StageTransitioned (by session_total, then occurred_at).
    Column("last_decision", String),
    Column("last_decision_at", UtcDateTime),
    Column("last_session_id", String),
    Column("sessions_completed", Integer),
)
"""Current status of each mouse: what its next session runs, and how it got there."""

stage_history = Table(
    "stage_history",
    metadata,
    Column("mouse_id", String, primary_key=True),
    # Finished sessions before the mouse entered the stage (0 = from enrollment).
    Column("entered_at_session", Integer, primary_key=True),
    # The event that put the mouse on the stage; part of the key so two causes at the same
    # session (say a re-enrollment) never compete for one row.
    Column("event_id", String, primary_key=True),
    Column("stage", String, nullable=False),
    Column("from_stage", String),
    # The StageTransitioned decision, or "enrolled" for the initial stage.
    Column("decision", String, nullable=False),
    Column("rule", String),
    Column("curriculum_name", String),
    Column("curriculum_version", String),
    Column("occurred_at", UtcDateTime, nullable=False),
    # The decision that replaced this row's decision after a recompute (NULL: in force).
    Column("superseded_by", String),
)
"""One row per stage a mouse entered: from AssignmentIssued with reason "enrolled" and from
StageTransitioned with a decision other than "stay". Rows of a replaced decision stay, marked
by ``superseded_by``."""

stage_reached = Table(
    "stage_reached",
    metadata,
    Column("mouse_id", String, primary_key=True),
    Column("stage", String, primary_key=True),
    # Derived from the mouse's effective decisions (decision_log rows not superseded), so it is
    # right again as soon as a recompute's decisions are projected.
    Column("first_date", String, nullable=False),
    Column("session_id", String),
    Column("decision_id", String, nullable=False),
    Column("session_total", Integer, nullable=False),
)
"""Per mouse and stage (IBL: training status), the first date it was reached: the date of the
first session judged at it or sent to it by an effective decision (its session_id and
decision_id say which)."""

session_summaries = Table(
    "session_summaries",
    metadata,
    Column("session_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    # From SessionStarted.
    Column("rig_id", String),
    Column("stage", String),
    Column("curriculum_name", String),
    Column("curriculum_version", String),
    Column("assignment_id", String),
    Column("parameters_json", Text),
    Column("started_at", UtcDateTime),
    # From SessionEnded.
    Column("ended_at", UtcDateTime),
    Column("end_reason", String),
    Column("duration_s", Float),
    Column("n_trials_reported", Integer),
    # From the StageTransitioned that judged the session.
    Column("n_trials", Integer),
    Column("n_correct", Integer),
    Column("n_incorrect", Integer),
    Column("n_miss", Integer),
    Column("accuracy", Float),
    Column("decision", String),
    Column("next_stage", String),
    Column("decided_at", UtcDateTime),
)
"""One row per training session; created by whichever of its events arrives first."""

decision_log = Table(
    "decision_log",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    Column("session_id", String),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("curriculum_name", String, nullable=False),
    Column("curriculum_version", String, nullable=False),
    Column("from_stage", String, nullable=False),
    Column("to_stage", String, nullable=False),
    Column("decision", String, nullable=False),
    Column("rule", String),
    Column("sessions_at_stage", Integer, nullable=False),
    Column("session_total", Integer, nullable=False),
    # Every rule evaluated, in order, with its observations (JSON, sorted keys).
    Column("evidence_json", Text, nullable=False),
    # The values the curriculum reports with the decision (StageTransitioned.metrics, JSON):
    # IBL's per-date performance and signed psychometric parameters, which the plots draw.
    Column("metrics_json", Text),
    # The session's calendar date (StageTransitioned.session_date; else the UTC date decided).
    Column("session_date", String),
    # The decision this one replaces after a recompute (a late session), if any.
    Column("supersedes", String),
    # Written by the decision that replaces this one (whichever of the two arrives first):
    # NULL while this decision is in force.
    Column("superseded_by", String),
)
"""Every StageTransitioned, with the evidence behind it. A decision replaced after a late
session stays, marked by ``superseded_by``; the effective history is the rows where it is
NULL (one per judged session)."""

rejected_events = Table(
    "rejected_events",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Column("error_kind", String, nullable=False),
    Column("source_topic", String, nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Column("rejected_by", String, nullable=False),
    Column("original_value_hex", Text, nullable=False),
    # Version 2 dead letters: the whole original's size and SHA-256 (the hex may be cut).
    Column("original_size", BigInteger),
    Column("original_sha256", String),
)
"""Every EventRejected (dead letter), with the original bytes in hex; also what the projector
itself parked (``rejected_by = 'projector'``: a message it failed to apply)."""

interventions = Table(
    "interventions",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    # From the trainer's StageOverridden, MouseEjected, ParametersAdjusted or RigsAllowed
    # (accepted topic).
    Column("kind", String),  # override, eject, adjust, allow-rigs or release
    Column("requested_at", UtcDateTime),
    Column("requested_by", String),
    Column("reason", Text),
    Column("from_stage", String),  # override: the stage the trainer saw (None: not checked)
    Column("to_stage", String),  # override: the stage chosen
    Column("adjustments_json", Text),  # adjust: what was set (null clears), JSON
    Column("rig_ids_json", Text),  # allow-rigs: the rigs the mouse may train on, JSON list
    # The operator's command the event answers (its causation_id; None: sent as an event).
    Column("command_id", String),
    # True once the processor accepted a request with this id (events topic): a refusal of
    # another message with the same id then changes nothing here.
    Column("accepted", Boolean),
    # From the AssignmentIssued the processor issued for it (it was honoured); an allow-rigs
    # causes no assignment: its honoured_at is when it was accepted.
    Column("assignment_id", String),
    Column("assigned_stage", String),
    Column("honoured_at", UtcDateTime),
    # From the EventRejected the processor dead-lettered it with (it was refused).
    Column("refused_reason", Text),
    Column("refused_at", UtcDateTime),
)
"""Audit of every override, ejection, adjustment and list of allowed rigs a trainer sent: who,
when, what, why, and whether the processor honoured it (``honoured_at``; ``assignment_id``
for those that cause an assignment) or refused it (``refused_reason``)."""

mouse_adjustments = Table(
    "mouse_adjustments",
    metadata,
    Column("mouse_id", String, primary_key=True),
    # From the newest AssignmentIssued (by session_number, then occurred_at), as mouse_status.
    Column("adjustments_json", Text, nullable=False),  # applied on top of the stage's values
    Column("stage", String, nullable=False),
    Column("assignment_id", String, nullable=False),
    Column("session_number", Integer, nullable=False),
    Column("assigned_at", UtcDateTime, nullable=False),
)
"""The per-mouse parameter adjustments in force: those the mouse's current assignment applied
(``{}`` when none)."""

training_warnings = Table(
    "training_warnings",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    Column("session_id", String),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("kind", String, nullable=False),
    Column("message", Text, nullable=False),
    Column("stage", String, nullable=False),
    Column("curriculum_name", String, nullable=False),
    Column("curriculum_version", String, nullable=False),
    # The StageTransitioned the warning was raised with.
    Column("decision_id", String),
    # The warning rule and its observations (JSON, sorted keys).
    Column("evidence_json", Text, nullable=False),
)
"""Every TrainingWarning (decisions topic): something a trainer should know about a mouse."""

# -- husbandry (accepted topic): one row per fact, as the processor accepted it ------------------

husbandry_weights = Table(
    "husbandry_weights",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    # From WeightRecorded.
    Column("weighed_at", UtcDateTime, nullable=False),
    Column("grams", Float, nullable=False),
    Column("scale_id", String),
    Column("recorded_by", String),
    Column("confirmed", Boolean),
    Column("command_id", String),  # the RecordWeight it answers
)
"""Every weight recorded (WeightRecorded)."""

husbandry_water = Table(
    "husbandry_water",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    # From WaterGiven.
    Column("given_at", UtcDateTime, nullable=False),
    Column("ml", Float, nullable=False),
    Column("kind", String, nullable=False),  # earned, supplement or free_access
    Column("water_type", String, nullable=False),  # water, sucrose, citric_acid_water, hydrogel
    Column("given_by", String),
    Column("session_id", String),  # earned water: the session
    Column("command_id", String),  # the GiveWater it answers
)
"""Every water entry (WaterGiven)."""

husbandry_restrictions = Table(
    "husbandry_restrictions",
    metadata,
    # The RestrictionStarted that opened the episode.
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("reference_grams", Float, nullable=False),
    Column("reference_method", String, nullable=False),
    Column("implant_grams", Float, nullable=False),
    Column("birth_date", String),
    Column("sex", String),
    Column("started_by", String),
    Column("command_id", String),
    # From the RestrictionEnded that closed it (NULL: in force). A mouse's facts share one
    # partition of the accepted topic, so the end always follows its start.
    Column("ended_at", UtcDateTime),
    Column("ended_by", String),
    Column("end_reason", Text),
    Column("end_event_id", String),
)
"""Every water-restriction episode, from its start to its end."""

welfare_gate = Table(
    "welfare_gate",
    metadata,
    Column("mouse_id", String, primary_key=True),
    # From the newest AssignmentIssued or AssignmentHeld of the mouse (assignments topic, in
    # processing order): whether it may train, as the rig judges it.
    Column("restricted", Boolean, nullable=False),
    Column("cleared_on", String),  # the lab day it is cleared to train on (None: not cleared)
    Column("held", Boolean, nullable=False),
    Column("hold_reason", Text),  # why it is held, with the figures
    Column("held_at", UtcDateTime),  # the log's time of the weighing that held it
    Column("hold_event_id", String),  # the AssignmentHeld
    Column("status", String),  # ok, attention, warning, not_weighed_today
    Column("percent_of_expected", Float),
    Column("water_required_ml", Float),
    Column("water_given_ml", Float),
    Column("water_still_due_ml", Float),
    Column("supplement_ml", Float),
    Column("supplement_exceeds_cap", Boolean),
    Column("assignment_id", String),  # the newest assignment (None: a hold is the newest)
    Column("updated_at", UtcDateTime, nullable=False),
)
"""Each restricted mouse's gate as its newest assignment says it (issue 15: held until weighed
above its minimum, or released): one row per mouse that was ever restricted (``restricted``
False once its restriction ended)."""

welfare_holds = Table(
    "welfare_holds",
    metadata,
    Column("event_id", String, primary_key=True),  # the AssignmentHeld
    Column("mouse_id", String, nullable=False),
    # From AssignmentHeld (assignments topic): every hold, kept after it is released or
    # weighed away (welfare_gate holds only the newest), for the welfare export.
    Column("held_at", UtcDateTime, nullable=False),
    Column("session_number", Integer),
    Column("reason", Text, nullable=False),
    Column("status", String),
    Column("percent_of_expected", Float),
    Column("weight_event_id", String),  # the WeightRecorded that held it (causation)
)
"""Every hold of a restricted mouse (AssignmentHeld), with the reason and the figures."""

husbandry_notes = Table(
    "husbandry_notes",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("mouse_id", String, nullable=False),
    Column("noted_at", UtcDateTime, nullable=False),
    Column("text", Text, nullable=False),
    Column("noted_by", String),
)
"""Every husbandry note (HusbandryNote)."""

# -- alerts (alerts topic): one row per alert, as its newest event says ---------------------------

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String, primary_key=True),
    # From the newest AlertRaised or AlertUpdated (by episode, then revision; an older event
    # applied late changes nothing). An alert's events share its key, so one partition.
    Column("rule", String, nullable=False),
    Column("severity", String, nullable=False),  # info, attention, warning, critical
    Column("scope", String, nullable=False),  # mouse, rig, lab, service
    Column("scope_key", String, nullable=False),  # the mouse id, rig id, lab or service name
    Column("mouse_id", String),  # the mouse of a mouse alert (NULL for the other scopes)
    Column("lab", String),
    Column("message", Text, nullable=False),
    Column("evidence_json", Text, nullable=False),  # what the rule saw (JSON, sorted keys)
    Column("raised_at", UtcDateTime, nullable=False),  # when the episode was raised
    Column("updated_at", UtcDateTime, nullable=False),  # the newest raise, update or resolve
    # From the AlertResolved that closed the episode (NULL: open); a new episode's AlertRaised
    # reopens the row (NULL again).
    Column("resolved_at", UtcDateTime),
    Column("resolution", Text),  # why it was resolved (and by whom, when a person closed it)
    # From the AlertAcknowledged of the episode (NULL: not acknowledged; a new episode clears
    # them).
    Column("acknowledged_by", String),
    Column("acknowledged_at", UtcDateTime),
    Column("episode", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
)
"""Every alert (the alerts service's AlertRaised, AlertUpdated, AlertResolved and the people's
AlertAcknowledged, alerts topic): its newest episode, open while ``resolved_at`` is NULL."""

projector_offsets = Table(
    "projector_offsets",
    metadata,
    Column("consumer", String, primary_key=True),
    Column("topic", String, primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)
"""The tracking record: the next offset to read per consumer and topic-partition. Written in
the same transaction as the rows of the batch it covers."""

projected_events = Table(
    "projected_events",
    metadata,
    Column("event_id", String, primary_key=True),
)
"""The event_ids already projected, so an event published twice is applied once."""

Index("ix_stage_history_stage", stage_history.c.stage)
Index("ix_session_summaries_mouse", session_summaries.c.mouse_id, session_summaries.c.started_at)
Index("ix_decision_log_mouse", decision_log.c.mouse_id, decision_log.c.occurred_at)
Index("ix_decision_log_supersedes", decision_log.c.supersedes)
Index("ix_decision_log_session", decision_log.c.session_id)
Index("ix_rejected_events_mouse", rejected_events.c.mouse_id)
Index("ix_interventions_mouse", interventions.c.mouse_id, interventions.c.requested_at)
Index("ix_training_warnings_mouse", training_warnings.c.mouse_id, training_warnings.c.occurred_at)
Index("ix_husbandry_weights_mouse", husbandry_weights.c.mouse_id, husbandry_weights.c.weighed_at)
Index("ix_husbandry_water_mouse", husbandry_water.c.mouse_id, husbandry_water.c.given_at)
Index("ix_husbandry_restrictions_mouse", husbandry_restrictions.c.mouse_id)
Index("ix_husbandry_notes_mouse", husbandry_notes.c.mouse_id, husbandry_notes.c.noted_at)
Index("ix_welfare_holds_mouse", welfare_holds.c.mouse_id, welfare_holds.c.held_at)
Index("ix_alerts_mouse", alerts.c.mouse_id, alerts.c.raised_at)
Index("ix_alerts_open", alerts.c.resolved_at)

PROJECTION_TABLES: tuple[Table, ...] = (
    mouse_status,
    stage_history,
    stage_reached,
    session_summaries,
    decision_log,
    rejected_events,
    interventions,
    mouse_adjustments,
    training_warnings,
    husbandry_weights,
    husbandry_water,
    husbandry_restrictions,
    husbandry_notes,
    welfare_gate,
    welfare_holds,
    alerts,
)
"""The tables that hold projected facts (what a snapshot compares)."""

TRACKING_TABLES: tuple[Table, ...] = (projector_offsets, projected_events)
"""The projector's own bookkeeping."""
