"""The gpiozero devices on gpiozero's MockFactory: outputs reach the pins, pins reach the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gpiozero import DigitalOutputDevice

from shaping.rig.config import ActuatorSettings, parse_pin_map
from shaping.rig.errors import HardwareError
from shaping.rig.hardware.devices import InputBus, connect_inputs
from shaping.rig.hardware.gpio import build_gpiozero_hardware
from shaping.rig.sim.reach_box import mock_factory
from tests.support.rig import PINS

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")


class FakeClock:
    """A clock that never waits: the bus is read only after pins were driven."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def wait(self, flag: Any, timeout_s: float) -> bool:
        return bool(flag.is_set())


def test_outputs_drive_their_pins_with_the_configured_polarity(tmp_path: Path) -> None:
    factory = mock_factory()
    pins = parse_pin_map({**PINS, "cue_right": {"pin": 8, "active_high": False}})
    hardware = build_gpiozero_hardware(pins, ActuatorSettings(), pin_factory=factory)
    try:
        left, right = hardware.spouts["left"], hardware.spouts["right"]
        assert not factory.pin(7).state and factory.pin(8).state  # both cues off
        left.cue.on()
        right.cue.on()
        assert factory.pin(7).state and not factory.pin(8).state
        assert left.cue.is_lit and right.cue.is_lit
        right.valve.open()
        assert factory.pin(9).state and right.valve.is_open
        assert hardware.sync is not None
        hardware.sync.high()
        assert factory.pin(27).state
        assert left.actuator is not None
        left.actuator.move_to(7)
        assert factory.pin(2).state == pytest.approx((1.44 + 6 * 0.057) / 20)
        left.actuator.move_to(12)  # clamped to the furthest position
        assert left.actuator.position == 7
        hardware.all_off()
        assert not any(factory.pin(p).state for p in (7, 9, 27)) and factory.pin(8).state
    finally:
        hardware.close()


def test_sensors_report_touches_lifts_and_rests_on_the_bus() -> None:
    factory = mock_factory()
    pins = parse_pin_map({**PINS, "touch_right": {"pin": 15, "pull_up": True}})
    hardware = build_gpiozero_hardware(pins, pin_factory=factory)
    clock = FakeClock()
    bus = InputBus(clock)
    connect_inputs(hardware, bus)
    try:
        factory.pin(12).drive_high()  # left paw rests
        factory.pin(14).drive_high()  # left spout touched (active high)
        factory.pin(14).drive_low()
        factory.pin(15).drive_low()  # right spout touched (pull-up: active low)
        clock.t = 101.5
        factory.pin(12).drive_low()  # left paw lifted
        events = [bus.next(0) for _ in range(5)]
        assert [(e.kind, e.side, e.at) for e in events if e] == [
            ("paw_rest", "left", 100.0),
            ("touch", "left", 100.0),
            ("touch", "right", 100.0),
            ("paw_lift", "left", 101.5),
        ]
        assert events[-1] is None
        assert hardware.spouts["right"].touch.is_touched
        assert not hardware.paws["left"].is_resting
    finally:
        hardware.close()


def test_a_device_that_cannot_open_fails_clearly_and_releases_the_others() -> None:
    factory = mock_factory()
    squatter = DigitalOutputDevice(9, pin_factory=factory)  # something else holds GPIO9
    pins = parse_pin_map(PINS)
    with pytest.raises(HardwareError, match=r"could not open.*--simulate"):
        build_gpiozero_hardware(pins, pin_factory=factory)
    squatter.close()
    hardware = build_gpiozero_hardware(pins, pin_factory=factory)  # nothing was left open
    hardware.close()
