"""Reward planning: how long each valve opens for a reward, by duration or by volume through the
valve's calibration, and how much water that gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shaping.rig.config import SIDES, Side, ValveCalibration
from shaping.rig.errors import CalibrationError
from shaping.rig.task.parameters import ReachParameters

DEFAULT_REWARD_MS = 70.0
"""Valve opening per reward when the assignment gives neither a duration nor a volume."""

MAX_OPEN_MS = 1000.0
"""No reward opens a valve longer than this (a wrong calibration must not flood the rig)."""


@dataclass(frozen=True)
class RewardPlan:
    """How long each valve opens for a reward and how much water that gives.

    Attributes:
        open_ms: milliseconds per valve.
        volume_ul: microlitres per valve (0 when given by duration on an uncalibrated valve).
    """

    open_ms: Mapping[Side, float]
    volume_ul: Mapping[Side, float]

    @classmethod
    def plan(
        cls, params: ReachParameters, calibrations: Mapping[str, ValveCalibration]
    ) -> RewardPlan:
        """Rewards by duration (``reward_ms``) or by volume through each valve's calibration.

        Raises:
            CalibrationError: a reward by volume on a valve without calibration, or an
                opening longer than MAX_OPEN_MS.
        """
        open_ms: dict[Side, float] = {}
        volume: dict[Side, float] = {}
        for side in SIDES:
            calibration = calibrations.get(side)
            if params.reward_ms is not None or params.reward_volume_ul is None:
                open_ms[side] = params.reward_ms or DEFAULT_REWARD_MS
                volume[side] = calibration.ml_per_ms * open_ms[side] * 1000 if calibration else 0.0
            else:
                if calibration is None:
                    raise CalibrationError(
                        f"the assignment gives rewards by volume ({params.reward_volume_ul:g} "
                        f"µL) but the {side} valve has no calibration: run `shaping rig "
                        f"calibrate {side}` or set [valves.{side}] ml_per_ms in the config"
                    )
                open_ms[side] = calibration.open_ms(params.reward_volume_ul)
                volume[side] = params.reward_volume_ul
            if open_ms[side] > MAX_OPEN_MS:
                raise CalibrationError(
                    f"a reward would open the {side} valve for {open_ms[side]:.0f} ms (more "
                    f"than {MAX_OPEN_MS:.0f} ms); check its calibration and the reward"
                )
        return cls(open_ms, volume)
