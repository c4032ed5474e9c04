"""reach interop: import reach's per-mouse training JSON as events, and compute reach's
per-session results from any session's events (imported or recorded by this rig).

reach (github.com/m-col/reach) stores one JSON per mouse: a list of sessions, each with its
``trials`` (``start``, ``end``, ``spout`` 0 = left / 1 = right, ``outcome`` 0 = missed,
1 = correct, 2 = incorrect, ``cue_duration`` in ms, ``spout_position`` [left, right],
``lift_time``, ``lift_paw``), ``resets`` and ``spontaneous_reaches`` (``[time, side]`` pairs),
the ``intertrial_interval`` in ms, ``duration`` in s, the ``date`` and start and end times,
and notes (trainer, weight, training box).

The import maps each session to SessionStarted, a TrialCompleted per finished trial, a
MovementDetected per reset (``paw_lift``, phase ``iti``), spontaneous reach (``spout_touch``,
phase ``iti``) and recorded lift (``paw_lift``, phase ``trial``), in time order, and
SessionEnded (``n_trials`` counts every trial reach started, as reach's results do). reach
writes start and end times as local wall-clock time without a zone; they are read as UTC unless
``utc_offset_hours`` says otherwise. Event ids derive from the mouse, session and position, so
importing the same file twice gives the same events.

d' (:func:`d_prime`): reach's definition at its HEAD (commit 8fabb4c): hits are correct
responses on left-target trials, false alarms incorrect responses on right-target trials,
misses are ignored, each rate gets the log-linear correction (Hautus 1995:
``(count + 0.5) / (n + 1)``), and d' = z(H) - z(FA). Correction trials (a trial whose previous
trial with a response was incorrect) are excluded; ``exclude_correction_trials=False`` gives
the definition reach used before 2021-08-17, which its own test still asserts for the last
session of its fixture.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

from shaping.schemas.events import (
    Event,
    MovementDetected,
    ParamValue,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)

_NAMESPACE = uuid.UUID("c5d3a1f2-7d55-4b0e-8e0c-2f7f6a9b1d34")
_OUTCOMES = {0: "miss", 1: "correct", 2: "incorrect"}
_SIDES: dict[int, Literal["left", "right"]] = {0: "left", 1: "right"}
IMPORT_CURRICULUM = "reach-import"
"""``curriculum_name`` of imported sessions (they ran before any Shaping curriculum)."""
RESET_PHASES = ("iti", "outcome")
"""Movements in these phases are what reach counts as resets and spontaneous reaches."""


def load_reach_file(path: Path | str) -> list[dict[str, Any]]:
    """Reads a reach training JSON (a list of session dicts)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
        raise ValueError(f"{path} is not a reach training file (a JSON list of sessions)")
    return data


def import_reach_sessions(
    sessions: Sequence[Mapping[str, Any]], mouse_id: str, utc_offset_hours: float = 0.0
) -> list[list[Event]]:
    """Turns reach's sessions of one mouse into events, one list per session."""
    return [
        _import_session(session, mouse_id, index, utc_offset_hours)
        for index, session in enumerate(sessions)
    ]


def _import_session(
    session: Mapping[str, Any], mouse_id: str, index: int, utc_offset_hours: float
) -> list[Event]:
    offset = timedelta(hours=utc_offset_hours)
    day = date.fromisoformat(str(session["date"]))
    start = _when(session.get("start_time"), day, offset)
    end = _when(session.get("end_time"), day, offset)
    trials: list[Mapping[str, Any]] = list(session.get("trials") or [])
    if start is None:
        start = _epoch(trials[0]["start"]) if trials else datetime.combine(day, time(), UTC)
    if end is None:
        end = start + timedelta(seconds=float(session.get("duration", 0)))
    session_id = f"{mouse_id}-reach-{start:%Y%m%dT%H%M%S}"
    envelope = {
        "mouse_id": mouse_id,
        "rig_id": f"reach-box-{session.get('training_box', 'unknown')}",
        "session_id": session_id,
    }

    def event_id(*parts: object) -> str:
        return str(uuid.uuid5(_NAMESPACE, "/".join([mouse_id, session_id, *map(str, parts)])))

    parameters: dict[str, ParamValue] = {"reach_day": index + 1}
    iti = session.get("intertrial_interval")
    if isinstance(iti, list | tuple) and len(iti) == 2:
        parameters["iti_min_s"] = float(iti[0]) / 1000
        parameters["iti_max_s"] = float(iti[1]) / 1000
    if isinstance(session.get("timeout"), int | float):
        parameters["timeout_s"] = float(session["timeout"]) / 1000
    for name in ("trainer", "weight", "training_box", "notes", "advance_with_incorrects"):
        value = session.get(name)
        if isinstance(value, bool | int | float | str):
            parameters[name] = value
    started = SessionStarted(
        event_id=event_id("started"),
        occurred_at=start,
        stage="reach",
        curriculum_name=IMPORT_CURRICULUM,
        curriculum_version=str(index + 1),
        parameters=parameters,
        **envelope,  # type: ignore[arg-type]
    )
    timed: list[tuple[float, int, Event]] = []
    trial_starts = sorted(float(t["start"]) for t in trials if "start" in t)
    previous_incorrect = False
    for number, trial in enumerate(trials):
        code = trial.get("outcome")
        if code not in _OUTCOMES or trial.get("spout") not in _SIDES:
            continue  # a trial reach started but never finished: only counted in n_trials
        outcome = _OUTCOMES[code]
        target = _SIDES[trial["spout"]]
        other = "right" if target == "left" else "left"
        began = float(trial["start"])
        finished = float(trial.get("end", began))
        if "lift_time" in trial and trial.get("lift_paw") in _SIDES:
            lift = float(trial["lift_time"])
            timed.append(
                (
                    lift,
                    1,
                    MovementDetected(
                        event_id=event_id("lift", number),
                        occurred_at=_epoch(lift),
                        movement="paw_lift",
                        side=_SIDES[trial["lift_paw"]],
                        phase="trial",
                        trial_index=number,
                        **envelope,  # type: ignore[arg-type]
                    ),
                )
            )
        position = trial.get("spout_position") or [None, None]
        trial_parameters: dict[str, ParamValue] = {
            "spout_position_left": position[0],
            "spout_position_right": position[1],
        }
        if isinstance(trial.get("cue_duration"), int | float):
            trial_parameters["cue_duration_s"] = float(trial["cue_duration"]) / 1000
        if isinstance(trial.get("shaping"), bool):
            trial_parameters["shaping"] = trial["shaping"]
        timed.append(
            (
                finished,
                2,
                TrialCompleted(
                    event_id=event_id("trial", number),
                    occurred_at=_epoch(finished),
                    trial_index=number,
                    outcome=outcome,  # type: ignore[arg-type]
                    target_side=target,
                    response_side=None
                    if outcome == "miss"
                    else (target if outcome == "correct" else other),
                    reaction_time_s=None if outcome == "miss" else round(finished - began, 4),
                    correction_trial=previous_incorrect,
                    trial_parameters=trial_parameters,
                    **envelope,  # type: ignore[arg-type]
                ),
            )
        )
        if outcome != "miss":
            previous_incorrect = outcome == "incorrect"
    for kind, movement in (("resets", "paw_lift"), ("spontaneous_reaches", "spout_touch")):
        for number, (at, side) in enumerate(session.get(kind) or []):
            timed.append(
                (
                    float(at),
                    0,
                    MovementDetected(
                        event_id=event_id(kind, number),
                        occurred_at=_epoch(float(at)),
                        movement=movement,  # type: ignore[arg-type]
                        side=_SIDES[side],
                        phase="iti",
                        trial_index=sum(1 for s in trial_starts if s <= float(at)),
                        **envelope,  # type: ignore[arg-type]
                    ),
                )
            )
    timed.sort(key=lambda item: (item[0], item[1]))
    duration = float(session.get("duration") or (end - start).total_seconds())
    ended = SessionEnded(
        event_id=event_id("ended"),
        occurred_at=max(end, start),
        n_trials=len(trials),
        end_reason="time_limit" if round(duration) >= 1800 else "aborted",
        duration_s=max(0.0, duration),
        **envelope,  # type: ignore[arg-type]
    )
    return [started, *(event for _, _, event in timed), ended]


def _epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _when(value: Any, day: date, offset: timedelta) -> datetime | None:
    if isinstance(value, int | float):
        return _epoch(float(value))
    if isinstance(value, str) and value:
        return datetime.combine(day, time.fromisoformat(value), UTC) - offset
    return None


@dataclass(frozen=True)
class ReachResults:
    """reach's per-session results (``Session.get_results``), computed from events."""

    date: str
    start_time: str
    end_time: str
    duration: float
    intertrial_interval: tuple[float, float] | None
    trials: int
    correct_l: int
    correct_r: int
    incorrect_l: int
    incorrect_r: int
    missed_l: int
    missed_r: int
    resets: int
    resets_l: int
    resets_r: int
    spontaneous_reaches: int
    spontaneous_reaches_l: int
    spontaneous_reaches_r: int
    d_prime: float
    d_prime_all_trials: float

    def as_dict(self) -> dict[str, Any]:
        """The results under reach's names."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def d_prime(trials: Iterable[TrialCompleted], exclude_correction_trials: bool = True) -> float:
    """reach's d' for a session (see the module docstring for the definition)."""
    lefts = rights = hits = false_alarms = 0
    for trial in trials:
        if trial.outcome == "miss" or (exclude_correction_trials and trial.correction_trial):
            continue
        if trial.target_side == "left":
            lefts += 1
            hits += trial.outcome == "correct"
        else:
            rights += 1
            false_alarms += trial.outcome == "incorrect"
    hit_rate = (hits + 0.5) / (lefts + 1)
    false_alarm_rate = (false_alarms + 0.5) / (rights + 1)
    normal = NormalDist()
    return normal.inv_cdf(hit_rate) - normal.inv_cdf(false_alarm_rate)


def reach_results(events: Sequence[Event]) -> ReachResults:
    """reach's results for one session's events (imported, or recorded by a Shaping rig)."""
    started = next((e for e in events if isinstance(e, SessionStarted)), None)
    ended = next((e for e in events if isinstance(e, SessionEnded)), None)
    trials = [e for e in events if isinstance(e, TrialCompleted)]
    moves = [e for e in events if isinstance(e, MovementDetected) and e.phase in RESET_PHASES]

    def count(side: str, outcome: str) -> int:
        return sum(1 for t in trials if t.target_side == side and t.outcome == outcome)

    def moved(kind: str, side: str | None = None) -> int:
        return sum(1 for m in moves if m.movement == kind and side in (None, m.side))

    first = started.occurred_at if started else (trials[0].occurred_at if trials else None)
    last = ended.occurred_at if ended else (trials[-1].occurred_at if trials else None)
    iti = None
    if started is not None:
        low, high = started.parameters.get("iti_min_s"), started.parameters.get("iti_max_s")
        if isinstance(low, int | float) and isinstance(high, int | float):
            iti = (round(float(low) * 1000, 3), round(float(high) * 1000, 3))
    return ReachResults(
        date=f"{first:%Y-%m-%d}" if first else "",
        start_time=f"{first:%H:%M:%S}" if first else "",
        end_time=f"{last:%H:%M:%S}" if last else "",
        duration=ended.duration_s if ended else 0.0,
        intertrial_interval=iti,
        trials=ended.n_trials if ended else len(trials),
        correct_l=count("left", "correct"),
        correct_r=count("right", "correct"),
        incorrect_l=count("left", "incorrect"),
        incorrect_r=count("right", "incorrect"),
        missed_l=count("left", "miss"),
        missed_r=count("right", "miss"),
        resets=moved("paw_lift"),
        resets_l=moved("paw_lift", "left"),
        resets_r=moved("paw_lift", "right"),
        spontaneous_reaches=moved("spout_touch"),
        spontaneous_reaches_l=moved("spout_touch", "left"),
        spontaneous_reaches_r=moved("spout_touch", "right"),
        d_prime=d_prime(trials),
        d_prime_all_trials=d_prime(trials, exclude_correction_trials=False),
    )


def reach_session_metrics(events: Sequence[Event]) -> dict[str, float | None]:
    """reach's results that trial counts alone do not give, for ``SessionEnded.metrics``:
    ``d_prime`` (correction trials excluded), ``resets`` and ``spontaneous_reaches``."""
    results = reach_results(events)
    return {
        "d_prime": results.d_prime,
        "resets": float(results.resets),
        "spontaneous_reaches": float(results.spontaneous_reaches),
    }
