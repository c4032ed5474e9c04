"""The reach task's parameters: their names, types, defaults and checks.

Parameters, read from the assignment (a missing one takes its default; a wrong type is an
error before the session starts):

==========================  ===========  ================================================
name                        default      meaning
==========================  ===========  ================================================
session_minutes             30           session length limit
max_trials                  none         stop after this many trials
iti_min_s, iti_max_s        4, 6         inter-trial interval range (seconds)
timeout_s                   8            after an incorrect reach and after a broken ITI
cue_duration_s              10           cue length at session start (adapts)
cue_duration_min_s          2            shortest cue adaptation may reach
cue_duration_factor         0.997        cue shortening per adaptation step
response_window_s           cue length   how long after cue onset a touch counts
reward_ms                   70 if no     valve opening time; wins over reward_volume_ul
                            volume
reward_volume_ul            none         reward by volume through the valve calibration
spout_position_left/right   1            spout positions at session start (1..max, adapt)
spout_position_max          7            furthest spout position
adapt                       true         in-session adaptation on or off
adapt_window                15           trials per spout the hit rate looks at
adapt_hit_rate              0.9          hit rate that triggers a step
adapt_every                 5            trials between two steps
adapt_with_incorrects       false        count incorrect reaches as hits (reach's option)
target_side                 random       random, left or right
p_left                      0.5          chance of a left target when random
repeat_after_incorrect      false        correction trials: repeat the target after an error
require_paw_rest            true         wait for the paws to rest before the countdown
recent_outcomes_left/right  ""           carried-over adaptation window, oldest first,
                                         ``c`` correct, ``i`` incorrect, ``m`` miss
==========================  ===========  ================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shaping.rig.errors import ParameterError
from shaping.schemas.events import ParamValue


@dataclass(frozen=True)
class ReachParameters:
    """The task's parameters (see the module docstring for each one's meaning)."""

    session_minutes: float = 30.0
    max_trials: int | None = None
    iti_min_s: float = 4.0
    iti_max_s: float = 6.0
    timeout_s: float = 8.0
    cue_duration_s: float = 10.0
    cue_duration_min_s: float = 2.0
    cue_duration_factor: float = 0.997
    response_window_s: float | None = None
    reward_ms: float | None = None
    reward_volume_ul: float | None = None
    spout_position_left: int = 1
    spout_position_right: int = 1
    spout_position_max: int = 7
    adapt: bool = True
    adapt_window: int = 15
    adapt_hit_rate: float = 0.9
    adapt_every: int = 5
    adapt_with_incorrects: bool = False
    target_side: str = "random"
    p_left: float = 0.5
    repeat_after_incorrect: bool = False
    require_paw_rest: bool = True
    recent_outcomes_left: str = ""
    recent_outcomes_right: str = ""

    @classmethod
    def from_assignment(cls, parameters: Mapping[str, ParamValue]) -> ReachParameters:
        """Reads the task's parameters from an assignment; unknown names are ignored.

        Raises:
            ParameterError: a parameter has the wrong type or an impossible value (the
                message names it).
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in parameters or parameters[spec.name] is None:
                continue
            values[spec.name] = _coerce(spec.name, str(spec.type), parameters[spec.name])
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        """Raises ParameterError on an impossible combination."""
        rules: list[tuple[bool, str]] = [
            (self.session_minutes > 0, "session_minutes must be > 0"),
            (self.max_trials is None or self.max_trials > 0, "max_trials must be > 0"),
            (0 <= self.iti_min_s <= self.iti_max_s, "need 0 <= iti_min_s <= iti_max_s"),
            (self.timeout_s >= 0, "timeout_s must be >= 0"),
            (self.cue_duration_s > 0, "cue_duration_s must be > 0"),
            (
                0 < self.cue_duration_min_s <= self.cue_duration_s,
                "need 0 < cue_duration_min_s <= cue_duration_s",
            ),
            (0 < self.cue_duration_factor <= 1, "cue_duration_factor must be in (0, 1]"),
            (
                self.response_window_s is None or self.response_window_s > 0,
                "response_window_s must be > 0",
            ),
            (self.reward_ms is None or self.reward_ms > 0, "reward_ms must be > 0"),
            (
                self.reward_volume_ul is None or self.reward_volume_ul > 0,
                "reward_volume_ul must be > 0",
            ),
            (self.spout_position_max >= 1, "spout_position_max must be >= 1"),
            (
                1 <= self.spout_position_left <= self.spout_position_max
                and 1 <= self.spout_position_right <= self.spout_position_max,
                "spout positions must lie in 1..spout_position_max",
            ),
            (self.adapt_window >= 1, "adapt_window must be >= 1"),
            (0 <= self.adapt_hit_rate <= 1, "adapt_hit_rate must be in [0, 1]"),
            (self.adapt_every >= 1, "adapt_every must be >= 1"),
            (
                self.target_side in ("random", "left", "right"),
                "target_side must be random, left or right",
            ),
            (0 <= self.p_left <= 1, "p_left must be in [0, 1]"),
            (
                set(self.recent_outcomes_left + self.recent_outcomes_right) <= set("cim"),
                "recent_outcomes_left/right may only hold c, i and m",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ParameterError(f"assignment parameters: {message}")

    def resolved(self) -> dict[str, ParamValue]:
        """Every parameter with the value the session runs with."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}


def _coerce(name: str, annotation: str, value: ParamValue) -> Any:
    kind = annotation.replace(" | None", "")
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    wanted = {"bool": "true or false", "int": "a whole number", "float": "a number"}
    raise ParameterError(
        f"assignment parameter {name} must be {wanted.get(kind, 'text')}, "
        f"got {value!r} ({type(value).__name__})"
    )
