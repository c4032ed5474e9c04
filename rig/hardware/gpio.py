"""The devices of :mod:`shaping.rig.hardware.devices` with gpiozero: what a Raspberry Pi runs.

:func:`build_gpiozero_hardware` opens every device of a validated pin map. Without a pin
factory gpiozero picks the Pi's (lgpio, RPi.GPIO, ...); tests and simulations pass gpiozero's
``MockFactory`` and drive its mock pins instead, so the code below is exercised either way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from shaping.rig.config import SIDES, ActuatorSettings, PinMap, PinSpec
from shaping.rig.errors import HardwareError
from shaping.rig.hardware.devices import RigHardware, Spout

try:
    from gpiozero import DigitalInputDevice, DigitalOutputDevice, GPIOZeroError, PWMOutputDevice
    from gpiozero.exc import PinFactoryFallback
except ImportError as exc:  # pragma: no cover - the rig extra is installed in development
    raise HardwareError(
        "gpiozero is not installed; install the rig extra: pip install 'shaping[rig]'"
    ) from exc


def _output(spec: PinSpec, pin_factory: Any) -> DigitalOutputDevice:
    """A digital output as the pin map describes it, off at start."""
    return DigitalOutputDevice(
        spec.pin, active_high=spec.active_high, initial_value=False, pin_factory=pin_factory
    )


def _input(spec: PinSpec, pin_factory: Any) -> DigitalInputDevice:
    """A digital input as the pin map describes it (pull-up and debounce)."""
    return DigitalInputDevice(
        spec.pin,
        pull_up=spec.pull_up,
        bounce_time=spec.bounce_ms / 1000 if spec.bounce_ms else None,
        pin_factory=pin_factory,
    )


class GpiozeroCueLight:
    """A cue LED on a digital output."""

    def __init__(self, spec: PinSpec, pin_factory: Any = None) -> None:
        self.device = _output(spec, pin_factory)

    def on(self) -> None:
        """Lights the cue."""
        self.device.on()

    def off(self) -> None:
        """Turns the cue off."""
        self.device.off()

    @property
    def is_lit(self) -> bool:
        """Whether the cue is on."""
        return bool(self.device.value)


class GpiozeroTouchSensor:
    """A touch or lick sensor on a digital input (active = touched)."""

    def __init__(self, spec: PinSpec, pin_factory: Any = None) -> None:
        self.device = _input(spec, pin_factory)

    @property
    def is_touched(self) -> bool:
        """Whether the spout is touched now."""
        return bool(self.device.is_active)

    def on_touch(self, callback: Callable[[], None] | None) -> None:
        """Calls ``callback`` on every touch."""
        self.device.when_activated = callback


class GpiozeroPawRestSensor:
    """A paw-rest sensor on a digital input (active = the paw rests on it)."""

    def __init__(self, spec: PinSpec, pin_factory: Any = None) -> None:
        self.device = _input(spec, pin_factory)

    @property
    def is_resting(self) -> bool:
        """Whether the paw rests on the sensor."""
        return bool(self.device.is_active)

    def on_change(
        self, lifted: Callable[[], None] | None, rested: Callable[[], None] | None
    ) -> None:
        """Calls ``lifted`` when the paw leaves the rest, ``rested`` when it returns."""
        self.device.when_deactivated = lifted
        self.device.when_activated = rested


class GpiozeroValve:
    """A solenoid valve on a digital output (on = open)."""

    def __init__(self, spec: PinSpec, pin_factory: Any = None) -> None:
        self.device = _output(spec, pin_factory)

    def open(self) -> None:
        """Opens the valve."""
        self.device.on()

    def close(self) -> None:
        """Closes the valve."""
        self.device.off()

    @property
    def is_open(self) -> bool:
        """Whether the valve is open."""
        return bool(self.device.value)


class GpiozeroSyncOutput:
    """The sync line on a digital output."""

    def __init__(self, spec: PinSpec, pin_factory: Any = None) -> None:
        self.device = _output(spec, pin_factory)

    def high(self) -> None:
        """Raises the line."""
        self.device.on()

    def low(self) -> None:
        """Lowers the line."""
        self.device.off()

    @property
    def is_high(self) -> bool:
        """Whether the line is high."""
        return bool(self.device.value)


class GpiozeroSpoutActuator:
    """A servo-style linear actuator on a 50 Hz PWM output (reach uses Actuonix PQ12-P)."""

    def __init__(self, spec: PinSpec, settings: ActuatorSettings, pin_factory: Any = None) -> None:
        self.settings = settings
        self.device = PWMOutputDevice(
            spec.pin,
            active_high=spec.active_high,
            initial_value=0,
            frequency=50,
            pin_factory=pin_factory,
        )
        self._position: int | None = None

    def move_to(self, position: int) -> None:
        """Drives the actuator to ``position`` (clamped to 1..positions)."""
        position = min(max(position, 1), self.settings.positions)
        self.device.value = self.settings.duty(position)
        self._position = position

    @property
    def position(self) -> int | None:
        """The last position commanded."""
        return self._position


def build_gpiozero_hardware(
    pins: PinMap, actuators: ActuatorSettings | None = None, pin_factory: Any = None
) -> RigHardware:
    """Opens every device of the pin map with gpiozero.

    Args:
        pins: a validated pin map (see :func:`shaping.rig.config.parse_pin_map`).
        actuators: spout actuator settings.
        pin_factory: a gpiozero pin factory; None lets gpiozero choose the Pi's.

    Raises:
        HardwareError: gpiozero could not open a device; everything opened so far is closed.
    """
    actuators = actuators or ActuatorSettings()
    opened: list[Any] = []

    def track(device: Any) -> Any:
        opened.append(device.device)
        return device

    with warnings.catch_warnings(record=True) as fallbacks:
        # gpiozero warns once per pin library it cannot use before it finds one (or none);
        # on failure those reasons belong in the error, not in a stream of warnings.
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            return _open(pins, actuators, pin_factory, track, opened)
        except (GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
            for device in reversed(opened):
                device.close()
            tried = "; ".join(str(w.message) for w in fallbacks)
            raise HardwareError(
                f"gpiozero could not open the rig's devices ({type(exc).__name__}: {exc}"
                + (f"; {tried}" if tried else "")
                + "); on a machine without GPIO use --simulate"
            ) from exc


def _open(
    pins: PinMap,
    actuators: ActuatorSettings,
    pin_factory: Any,
    track: Callable[[Any], Any],
    opened: list[Any],
) -> RigHardware:
    spouts = {}
    for side in SIDES:
        actuator_spec = pins.get(f"actuator_{side}")
        spouts[side] = Spout(
            side=side,
            cue=track(GpiozeroCueLight(pins[f"cue_{side}"], pin_factory)),
            touch=track(GpiozeroTouchSensor(pins[f"touch_{side}"], pin_factory)),
            valve=track(GpiozeroValve(pins[f"valve_{side}"], pin_factory)),
            actuator=track(GpiozeroSpoutActuator(actuator_spec, actuators, pin_factory))
            if actuator_spec
            else None,
        )
    paws = {
        side: track(GpiozeroPawRestSensor(spec, pin_factory))
        for side in SIDES
        if (spec := pins.get(f"paw_{side}")) is not None
    }
    sync_spec = pins.get("sync")
    sync = track(GpiozeroSyncOutput(sync_spec, pin_factory)) if sync_spec else None
    return RigHardware(
        spouts=spouts,
        paws=paws,
        sync=sync,
        closers=[device.close for device in opened],
    )
