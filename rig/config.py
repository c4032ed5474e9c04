"""The rig config file: who the rig is, where Kafka is, what is wired to which pin.

A rig reads one TOML file (``docs/rig.md`` shows a full example)::

    rig_id = "rig-1"
    mice = ["M001", "M002"]
    state_dir = "state"            # outbox, assignment cache, calibrations (relative to the file)

    [broker]
    bootstrap = "127.0.0.1:9092"
    topic_prefix = "shaping"
    # a secured cluster (optional; the default is PLAINTEXT):
    # security_protocol = "SASL_SSL"
    # sasl_mechanism = "SCRAM-SHA-512"
    # sasl_username = "rig-1"
    # sasl_password_file = "secrets/rig-1.password"   # mode 600; relative to the file
    # ssl_cafile = "secrets/ca.crt"
    # ingress = true               # SASL_SSL only (the default there): events go to the rig's
    #                              # own topic <prefix>.rig.<sasl_username>; the ingress gate
    #                              # forwards them (sasl_username must then be rig_id)

    [pins]                          # BCM GPIO numbers
    cue_left = 7
    cue_right = 8
    touch_left = 14
    touch_right = { pin = 15, pull_up = true }   # active-low sensor
    valve_left = 6
    valve_right = 9
    paw_left = 12
    paw_right = 13
    sync = 27

    [valves.left]
    ml_per_ms = 0.0000857           # from `shaping rig calibrate left`
    ul_per_opening = [0.5, 20]      # plausible calibrations (the defaults; see CalibrationBounds)

    [stale_assignment]              # when the current assignment has not arrived
    policy = "wait_then_run_cached" # or "refuse"
    max_wait_s = 10                 # how long `rig run` waits for it

    [safety]                        # for the animal: what no assignment may ask (the defaults)
    max_reward_ul_per_trial = 20
    max_reward_ms_per_trial = 250
    max_reward_ul_per_session = 3000
    max_session_minutes = 120
    max_trials = 2000
    on_violation = "refuse"         # or "last_safe"

    [safety.parameters]             # optional: allowed ranges of any parameter
    cue_duration_s = [2, 10]

Everything is checked when the file is loaded, and a mistake is reported with the entry that
causes it (``pins.cue_lft: unknown device; did you mean cue_left?``), so a rig never starts
half-configured.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from shaping.rig.errors import ConfigError, PinMapError
from shaping.rig.link.connection import (
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaLink,
    KafkaSecurity,
    check_ca_file,
    read_password,
)
from shaping.schemas.topics import TopicNames

Side = Literal["left", "right"]
SIDES: tuple[Side, Side] = ("left", "right")

DeviceKind = Literal["input", "output", "pwm"]

MAX_GPIO = 27
"""Highest BCM GPIO number on the Raspberry Pi's 40-pin header."""


@dataclass(frozen=True)
class DeviceSpec:
    """A device the pin map may wire: its kind, whether a rig needs it, what it is."""

    kind: DeviceKind
    required: bool
    description: str


DEVICES: dict[str, DeviceSpec] = {
    "cue_left": DeviceSpec("output", True, "cue LED of the left spout"),
    "cue_right": DeviceSpec("output", True, "cue LED of the right spout"),
    "touch_left": DeviceSpec("input", True, "touch (or lick) sensor of the left spout"),
    "touch_right": DeviceSpec("input", True, "touch (or lick) sensor of the right spout"),
    "valve_left": DeviceSpec("output", True, "reward solenoid valve of the left spout"),
    "valve_right": DeviceSpec("output", True, "reward solenoid valve of the right spout"),
    "paw_left": DeviceSpec("input", False, "left paw-rest sensor (active while the paw rests)"),
    "paw_right": DeviceSpec("input", False, "right paw-rest sensor (active while the paw rests)"),
    "sync": DeviceSpec("output", False, "sync output, high while a cue is on"),
    "actuator_left": DeviceSpec("pwm", False, "linear actuator moving the left spout"),
    "actuator_right": DeviceSpec("pwm", False, "linear actuator moving the right spout"),
}
"""Every device name a pin map may use."""

_PIN_OPTIONS: dict[DeviceKind, set[str]] = {
    "input": {"pin", "pull_up", "bounce_ms"},
    "output": {"pin", "active_high"},
    "pwm": {"pin", "active_high"},
}

_TOP_LEVEL = {
    "rig_id",
    "mice",
    "state_dir",
    "broker",
    "pins",
    "valves",
    "actuators",
    "stale_assignment",
    "safety",
}


@dataclass(frozen=True)
class PinSpec:
    """How one device is wired.

    Attributes:
        device: device name (a key of :data:`DEVICES`).
        pin: BCM GPIO number.
        pull_up: inputs: True for an active-low sensor (internal pull-up), False for an
            active-high one (internal pull-down).
        active_high: outputs: False when the device switches on with a low level.
        bounce_ms: inputs: ignore edges closer than this (gpiozero's bounce_time).
    """

    device: str
    pin: int
    pull_up: bool = False
    active_high: bool = True
    bounce_ms: float | None = None

    @property
    def kind(self) -> DeviceKind:
        """Input, output or PWM output."""
        return DEVICES[self.device].kind


@dataclass(frozen=True)
class PinMap:
    """The validated pin map: device name to wiring."""

    specs: Mapping[str, PinSpec]

    def get(self, device: str) -> PinSpec | None:
        """The wiring of a device, None when the rig does not have it."""
        return self.specs.get(device)

    def __getitem__(self, device: str) -> PinSpec:
        return self.specs[device]

    def __contains__(self, device: object) -> bool:
        return device in self.specs


@dataclass(frozen=True)
class ValveCalibration:
    """How much water a valve gives per millisecond open.

    Attributes:
        valve: ``left`` or ``right``.
        ml_per_ms: millilitres per millisecond the valve is open.
        source: where the value comes from (the config file, or a calibration and its date).
    """

    valve: str
    ml_per_ms: float
    source: str = "config file"

    def open_ms(self, volume_ul: float) -> float:
        """Milliseconds to open the valve to give ``volume_ul`` microlitres."""
        return (volume_ul / 1000.0) / self.ml_per_ms


Range = tuple[float, float]


@dataclass(frozen=True)
class CalibrationBounds:
    """What a valve's calibration may measure (``[valves.left]`` and ``[valves.right]`` of the
    config change them per valve).

    Each measurement's volume per opening and the fitted slope are checked: outside a hard
    range ``shaping rig calibrate`` refuses the calibration; outside a plausible range it
    warns loudly and asks, the answer defaulting to No.

    Attributes:
        ul_per_opening: plausible µL per opening (a reward is a few µL).
        ul_per_ms: plausible slope, µL per millisecond open (0.0857 µL/ms = 0.0000857 ml/ms).
        hard_ul_per_opening: possible µL per opening.
        hard_ul_per_ms: possible slope.
    """

    ul_per_opening: Range = (0.5, 20.0)
    ul_per_ms: Range = (0.01, 0.5)
    hard_ul_per_opening: Range = (0.1, 50.0)
    hard_ul_per_ms: Range = (0.002, 2.0)


CALIBRATION_BOUND_KEYS = ("ul_per_opening", "ul_per_ms", "hard_ul_per_opening", "hard_ul_per_ms")
"""The settings of a ``[valves.X]`` table that bound its calibrations."""


@dataclass(frozen=True)
class ActuatorSettings:
    """How spout positions map to the actuators' PWM pulses (50 Hz servo-style signal).

    Position ``p`` (1 = nearest the mouse) is driven with a pulse of
    ``pulse_ms_at_1 + (p - 1) * pulse_ms_per_position`` milliseconds every 20 ms.
    """

    positions: int = 7
    pulse_ms_at_1: float = 1.44
    pulse_ms_per_position: float = 0.057

    def duty(self, position: int) -> float:
        """PWM duty cycle (0..1) for a position."""
        return (self.pulse_ms_at_1 + (position - 1) * self.pulse_ms_per_position) / 20.0


StalePolicy = Literal["wait_then_run_cached", "refuse"]
STALE_POLICIES: tuple[StalePolicy, ...] = ("wait_then_run_cached", "refuse")
"""What ``rig run`` does when the current assignment of the mouse has not arrived."""

MAX_ASSIGNMENT_WAIT_S = 3600.0
"""The longest ``stale_assignment.max_wait_s`` a config may set: the wait is bounded."""


@dataclass(frozen=True)
class StaleAssignmentSettings:
    """The stale assignment policy (``[stale_assignment]``).

    An assignment is stale when the rig knows it is not the mouse's current one: the decision
    on the mouse's previous session on this rig has not arrived (the processor is slow or
    down, or the rig is offline), or the newest assignment on the broker was written with a
    schema this rig cannot read (the services were upgraded before the rig).

    Attributes:
        policy: ``wait_then_run_cached``: wait up to ``max_wait_s`` for the current assignment,
            then run the cached one, saying so on screen, in the log, in the
            ``shaping_rig_stale_assignments_total`` metric and in the SessionStarted it
            records (``assignment_stale``). ``refuse``: wait as long, then run nothing.
        max_wait_s: how long ``shaping rig run`` waits for the current assignment
            (``--assignment-timeout`` overrides it for one run).
    """

    policy: StalePolicy = "wait_then_run_cached"
    max_wait_s: float = 10.0

    def describe(self) -> str:
        """The policy in words."""
        then = "run the cached one" if self.policy == "wait_then_run_cached" else "refuse to run"
        return (
            f"wait up to {self.max_wait_s:g} s for the current assignment, then {then} "
            f"(stale_assignment.policy = {self.policy})"
        )


SafetyAction = Literal["refuse", "last_safe"]
SAFETY_ACTIONS: tuple[SafetyAction, ...] = ("refuse", "last_safe")
"""What a rig does with an assignment outside its safety limits: run nothing, or run the
newest assignment of the mouse it received that lies within them."""


@dataclass(frozen=True)
class SafetyLimits:
    """The rig's safety limits, for the animal (``[safety]``): what no assignment may ask,
    whoever wrote it (the processor, a trainer's adjustment, or a forged record).

    An assignment outside them is refused before the session starts: the rig says so on
    screen and in its log, counts it in ``shaping_rig_unsafe_assignments_total`` and keeps it
    in its store, then runs nothing (``on_violation = "refuse"``) or the newest assignment of
    the mouse it received that passes them (``"last_safe"``). While a session runs, the task
    also never gives more water per trial than allowed and stops the session at the
    per-session limits (:class:`shaping.rig.task.reach.ReachTask`).

    Attributes:
        max_reward_ul_per_trial: the most water one reward may give (µL; ``reward_volume_ul``,
            and ``reward_ms`` through a calibrated valve).
        max_reward_ms_per_trial: the longest a valve may open for one reward (``reward_ms``,
            and ``reward_volume_ul`` through the valve's calibration).
        max_reward_ul_per_session: the most water a session may give (µL): the task stops
            before a reward would pass it.
        max_session_minutes: the longest session (``session_minutes``).
        max_trials: the most trials of a session (``max_trials``; a session whose assignment
            sets none stops here).
        parameters: allowed ``[low, high]`` of any numeric parameter, by name.
        on_violation: ``refuse`` or ``last_safe``.
    """

    max_reward_ul_per_trial: float = 20.0
    max_reward_ms_per_trial: float = 250.0
    max_reward_ul_per_session: float = 3000.0
    max_session_minutes: float = 120.0
    max_trials: int = 2000
    parameters: Mapping[str, Range] = field(default_factory=dict)
    on_violation: SafetyAction = "refuse"

    def describe(self) -> str:
        """The limits in words."""
        ranges = "".join(
            f", {name} in [{low:g}, {high:g}]" for name, (low, high) in self.parameters.items()
        )
        return (
            f"at most {self.max_reward_ul_per_trial:g} µL and {self.max_reward_ms_per_trial:g} ms "
            f"per reward, {self.max_reward_ul_per_session:g} µL, {self.max_session_minutes:g} "
            f"min and {self.max_trials} trials per session{ranges}; "
            f"on_violation = {self.on_violation}"
        )


SAFETY_CEILINGS: dict[str, float] = {
    "max_reward_ul_per_trial": 100.0,
    "max_reward_ms_per_trial": 1000.0,
    "max_reward_ul_per_session": 10_000.0,
    "max_session_minutes": 1440.0,
    "max_trials": 100_000,
}
"""The highest value each ``[safety]`` limit may be set to: above it a limit protects no
mouse, and is taken for a mistake (a value in the wrong unit)."""

SAFETY_KEYS = (*SAFETY_CEILINGS, "parameters", "on_violation")
"""The settings of ``[safety]``."""


@dataclass(frozen=True)
class RigConfig:
    """A rig's validated configuration.

    Attributes:
        rig_id: the rig's name in every event it writes.
        mice: the mice this rig trains.
        bootstrap: Kafka bootstrap servers.
        topic_prefix: prefix of Shaping's topic names.
        kafka_security: how the rig authenticates to Kafka (``[broker]``'s security
            settings; plaintext by default). :attr:`link` joins it to ``bootstrap``.
        state_dir: where the rig keeps its SQLite store (outbox, assignment cache,
            calibrations).
        pins: the pin map.
        valves: valve calibrations from the config file, by valve (``left``/``right``).
        actuators: spout actuator settings.
        calibration_bounds: the bounds a valve's calibrations are checked against, for the
            valves whose ``[valves.X]`` sets any (:meth:`valve_bounds`).
        stale_assignment: what ``rig run`` does when the current assignment has not arrived.
        safety: what no assignment may ask, and what the rig does with one that does.
        path: the file the config was read from.
    """

    rig_id: str
    mice: tuple[str, ...]
    bootstrap: str
    topic_prefix: str
    state_dir: Path
    pins: PinMap
    valves: Mapping[str, ValveCalibration] = field(default_factory=dict)
    actuators: ActuatorSettings = ActuatorSettings()
    calibration_bounds: Mapping[str, CalibrationBounds] = field(default_factory=dict)
    stale_assignment: StaleAssignmentSettings = StaleAssignmentSettings()
    safety: SafetyLimits = SafetyLimits()
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    path: Path | None = None

    @classmethod
    def simulated(
        cls, rig_id: str, mice: Sequence[str], safety: SafetyLimits | None = None
    ) -> RigConfig:
        """A rig of the simulated lab (:mod:`shaping.rig.sim.lab`): its name, its mice and its
        safety limits. It has no pins, and no broker or store of its own: its agent is given a
        transport without an outbox, and the scripted task."""
        return cls(
            rig_id=rig_id,
            mice=tuple(mice),
            bootstrap="",
            topic_prefix="shaping",
            state_dir=Path(),
            pins=PinMap({}),
            safety=safety or SafetyLimits(),
        )

    @property
    def link(self) -> KafkaLink:
        """How the rig's Kafka clients connect: the brokers and the security settings."""
        return KafkaLink(self.bootstrap, self.kafka_security)

    @property
    def store_path(self) -> Path:
        """The rig's SQLite store."""
        return self.state_dir / "rig.sqlite"

    def valve_bounds(self, valve: str) -> CalibrationBounds:
        """The bounds a calibration of ``valve`` is checked against (the defaults unless the
        config's ``[valves.VALVE]`` sets them)."""
        return self.calibration_bounds.get(valve, CalibrationBounds())


def load_config(path: Path | str) -> RigConfig:
    """Reads and validates a rig config file.

    Raises:
        ConfigError: the file is missing, is not TOML, or has an invalid entry (the message
            names it).
        PinMapError: the pin map is wrong (unknown device, duplicate pin, missing device).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no rig config file at {path}; pass --config PATH or set SHAPING_RIG_CONFIG "
            "(docs/rig.md shows an example)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the rig config {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    return parse_config(data, path)


def parse_config(
    data: Mapping[str, Any], path: Path | None = None, default_bootstrap: str | None = None
) -> RigConfig:
    """Validates a config already parsed from TOML (see :func:`load_config`)."""
    where = f"{path}: " if path else ""
    _reject_unknown(data, _TOP_LEVEL, "", where, ConfigError)
    rig_id = data.get("rig_id")
    if not isinstance(rig_id, str) or not rig_id.strip():
        raise ConfigError(f'{where}rig_id must be a non-empty string, e.g. rig_id = "rig-1"')
    mice = _mice(data.get("mice"), where)
    broker = data.get("broker", {})
    if not isinstance(broker, Mapping):
        raise ConfigError(f"{where}[broker] must be a table")
    _reject_unknown(broker, BROKER_KEYS, "broker.", where, ConfigError)
    bootstrap = broker.get("bootstrap", default_bootstrap or "127.0.0.1:9092")
    prefix = broker.get("topic_prefix", "shaping")
    for name, value in (("bootstrap", bootstrap), ("topic_prefix", prefix)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}broker.{name} must be a non-empty string")
    state_dir = data.get("state_dir", "shaping-rig-state")
    if not isinstance(state_dir, str) or not state_dir:
        raise ConfigError(f"{where}state_dir must be a path")
    state_path = Path(state_dir).expanduser()
    if not state_path.is_absolute() and path is not None:
        state_path = path.parent / state_path
    return RigConfig(
        rig_id=rig_id.strip(),
        mice=mice,
        bootstrap=bootstrap.strip(),
        topic_prefix=prefix.strip(),
        state_dir=state_path,
        pins=parse_pin_map(data.get("pins"), where),
        valves=_valves(data.get("valves", {}), where),
        calibration_bounds=_calibration_bounds(data.get("valves", {}), where),
        actuators=_actuators(data.get("actuators", {}), where),
        stale_assignment=_stale_assignment(data.get("stale_assignment", {}), where),
        safety=parse_safety(data.get("safety", {}), where),
        kafka_security=_checked_ingress(
            parse_kafka_security(broker, path, where), rig_id.strip(), where
        ),
        path=path,
    )


BROKER_KEYS = {
    "bootstrap",
    "topic_prefix",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password_file",
    "ssl_cafile",
    "ingress",
}
"""The settings of ``[broker]``."""

_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password_file")


def parse_kafka_security(
    broker: Mapping[str, Any], path: Path | None = None, where: str = ""
) -> KafkaSecurity:
    """Validates the security settings of the ``[broker]`` table (none: plaintext).

    File paths are relative to the config file. The password file must exist, be a regular
    file readable by its owner only (mode 600) and hold a password; the CA file must exist.

    Raises:
        ConfigError: naming the setting at fault: an unknown protocol or mechanism, SASL
            settings without ``security_protocol = "SASL_SSL"`` (or SASL_SSL without them), a
            CA file on a plaintext link, a missing file or a password file open to others.
    """
    protocol = broker.get("security_protocol", "PLAINTEXT")
    if protocol not in SECURITY_PROTOCOLS:
        hint = (
            " (it would send the password in clear; use SASL_SSL)"
            if protocol == "SASL_PLAINTEXT"
            else _suggest(str(protocol), SECURITY_PROTOCOLS)
        )
        raise ConfigError(
            f"{where}broker.security_protocol: {protocol!r} is not allowed{hint}; choose "
            f"{', '.join(SECURITY_PROTOCOLS)}"
        )
    ingress = broker.get("ingress", protocol == "SASL_SSL")
    if not isinstance(ingress, bool):
        raise ConfigError(f"{where}broker.ingress must be true or false, not {ingress!r}")
    if ingress and protocol != "SASL_SSL":
        raise ConfigError(
            f'{where}broker.ingress needs security_protocol = "SASL_SSL" (security_protocol is '
            f"{protocol}): the ingress topic is the rig principal's"
        )
    for key in ("sasl_mechanism", "sasl_username", "sasl_password_file", "ssl_cafile"):
        value = broker.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}broker.{key} must be a non-empty string")
    if protocol != "SASL_SSL":
        given = [key for key in _SASL_KEYS if key in broker]
        if given:
            raise ConfigError(
                f'{where}broker.{given[0]} needs security_protocol = "SASL_SSL" '
                f"(security_protocol is {protocol})"
            )
    if protocol == "PLAINTEXT" and "ssl_cafile" in broker:
        raise ConfigError(
            f'{where}broker.ssl_cafile needs security_protocol = "SASL_SSL" or "SSL" '
            "(security_protocol is PLAINTEXT)"
        )
    cafile = _config_path(broker.get("ssl_cafile"), path)
    if cafile is not None:
        check_ca_file(cafile, f"{where}broker.ssl_cafile")
    if protocol != "SASL_SSL":
        return KafkaSecurity(protocol=protocol, ssl_cafile=cafile)
    missing = [key for key in ("sasl_username", "sasl_password_file") if key not in broker]
    if missing:
        raise ConfigError(
            f'{where}broker: security_protocol = "SASL_SSL" needs {" and ".join(missing)}'
            " (the rig's principal and the file holding its password)"
        )
    mechanism = broker.get("sasl_mechanism", "SCRAM-SHA-512")
    if mechanism not in SASL_MECHANISMS:
        raise ConfigError(
            f"{where}broker.sasl_mechanism: {mechanism!r} is not allowed"
            f"{_suggest(str(mechanism), SASL_MECHANISMS)}; choose {' or '.join(SASL_MECHANISMS)}"
        )
    password_file = _config_path(broker["sasl_password_file"], path)
    assert password_file is not None
    read_password(password_file, f"{where}broker.sasl_password_file")
    return KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username=broker["sasl_username"].strip(),
        sasl_password_file=password_file,
        ssl_cafile=cafile,
        ingress=ingress,
    )


def _checked_ingress(security: KafkaSecurity, rig_id: str, where: str) -> KafkaSecurity:
    """``security``, once its ingress topic is known to be the rig's own: the gate forwards
    only events whose ``rig_id`` is the principal's name (and names the topic after it)."""
    name = security.ingress_name
    if name is None:
        return security
    if name != rig_id:
        raise ConfigError(
            f"{where}broker.sasl_username {name!r} is not rig_id {rig_id!r}: with "
            "broker.ingress the ingress gate forwards only events whose rig_id is the "
            "principal's name (use the rig's own principal, or set ingress = false)"
        )
    try:
        TopicNames.with_prefix("x").rig_ingress(name)
    except ValueError as exc:
        raise ConfigError(f"{where}broker.sasl_username: {exc}") from None
    return security


def _config_path(value: str | None, path: Path | None) -> Path | None:
    """A path setting, relative to the config file's folder."""
    if value is None:
        return None
    found = Path(value.strip()).expanduser()
    if not found.is_absolute() and path is not None:
        found = path.parent / found
    return found


def parse_pin_map(pins: Any, where: str = "") -> PinMap:
    """Validates the ``[pins]`` table.

    Raises:
        PinMapError: naming the entry at fault: an unknown device (with the closest known
            name), a pin that is not a header GPIO, a pin used twice, an option a device of
            that kind does not take, or a required device that is missing.
    """
    if not isinstance(pins, Mapping) or not pins:
        raise PinMapError(
            f"{where}[pins] is missing: map each device to its BCM GPIO number, e.g. "
            "cue_left = 7 (devices: " + ", ".join(DEVICES) + ")"
        )
    specs: dict[str, PinSpec] = {}
    used: dict[int, str] = {}
    for device, entry in pins.items():
        spec = DEVICES.get(device)
        if spec is None:
            raise PinMapError(
                f"{where}pins.{device}: unknown device{_suggest(device, DEVICES)}; known "
                f"devices: {', '.join(DEVICES)}"
            )
        options: Mapping[str, Any] = entry if isinstance(entry, Mapping) else {"pin": entry}
        _reject_unknown(options, _PIN_OPTIONS[spec.kind], f"pins.{device}.", where, PinMapError)
        pin = options.get("pin")
        if isinstance(pin, bool) or not isinstance(pin, int) or not 0 <= pin <= MAX_GPIO:
            raise PinMapError(
                f"{where}pins.{device}: {pin!r} is not a GPIO number; use BCM numbering "
                f"(GPIO0 to GPIO{MAX_GPIO} on the 40-pin header)"
            )
        if pin in used:
            raise PinMapError(
                f"{where}pins.{device}: GPIO{pin} is already used by pins.{used[pin]}; "
                "every device needs its own pin"
            )
        used[pin] = device
        for flag in ("pull_up", "active_high"):
            if flag in options and not isinstance(options[flag], bool):
                raise PinMapError(f"{where}pins.{device}.{flag} must be true or false")
        bounce = options.get("bounce_ms")
        if bounce is not None and (
            isinstance(bounce, bool) or not isinstance(bounce, int | float) or bounce < 0
        ):
            raise PinMapError(f"{where}pins.{device}.bounce_ms must be a number >= 0")
        specs[device] = PinSpec(
            device=device,
            pin=pin,
            pull_up=bool(options.get("pull_up", False)),
            active_high=bool(options.get("active_high", True)),
            bounce_ms=float(bounce) if bounce is not None else None,
        )
    missing = [name for name, spec in DEVICES.items() if spec.required and name not in specs]
    if missing:
        raise PinMapError(
            f"{where}pins: missing "
            + "; ".join(f"{name} ({DEVICES[name].description})" for name in missing)
        )
    return PinMap(specs)


def _mice(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f'{where}mice must list the mice this rig trains, e.g. mice = ["M001"]')
    mice: list[str] = []
    for mouse in value:
        if not isinstance(mouse, str) or not mouse.strip():
            raise ConfigError(f"{where}mice: {mouse!r} is not a mouse id (a non-empty string)")
        if mouse in mice:
            raise ConfigError(f"{where}mice: {mouse} is listed twice")
        mice.append(mouse)
    return tuple(mice)


def _valves(value: Any, where: str) -> dict[str, ValveCalibration]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}[valves] must be a table of [valves.left] / [valves.right]")
    valves: dict[str, ValveCalibration] = {}
    for valve, entry in value.items():
        if valve not in SIDES:
            raise ConfigError(
                f"{where}valves.{valve}: unknown valve{_suggest(valve, SIDES)}; valves are "
                "left and right"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}valves.{valve} must be a table with ml_per_ms")
        allowed = {"ml_per_ms", *CALIBRATION_BOUND_KEYS}
        _reject_unknown(entry, allowed, f"valves.{valve}.", where, ConfigError)
        if "ml_per_ms" not in entry and any(key in entry for key in CALIBRATION_BOUND_KEYS):
            continue  # only calibration bounds for this valve
        rate = entry.get("ml_per_ms")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigError(
                f"{where}valves.{valve}.ml_per_ms must be a positive number (millilitres per "
                "millisecond open)"
            )
        valves[valve] = ValveCalibration(valve, float(rate))
    return valves


def _calibration_bounds(value: Any, where: str) -> dict[str, CalibrationBounds]:
    """The calibration bounds of each valve table that sets any (``_valves`` checked the rest)."""
    bounds: dict[str, CalibrationBounds] = {}
    if not isinstance(value, Mapping):
        return bounds
    defaults = CalibrationBounds()
    for valve, entry in value.items():
        if not isinstance(entry, Mapping) or not any(k in entry for k in CALIBRATION_BOUND_KEYS):
            continue
        ranges: dict[str, Range] = {}
        for key in CALIBRATION_BOUND_KEYS:
            ranges[key] = _range(
                entry.get(key, getattr(defaults, key)), f"{where}valves.{valve}.{key}"
            )
        for soft in ("ul_per_opening", "ul_per_ms"):
            low, high = ranges[soft]
            hard_low, hard_high = ranges[f"hard_{soft}"]
            if not (hard_low <= low and high <= hard_high):
                raise ConfigError(
                    f"{where}valves.{valve}.{soft} = [{low:g}, {high:g}] must lie within "
                    f"hard_{soft} = [{hard_low:g}, {hard_high:g}]"
                )
        bounds[valve] = CalibrationBounds(**ranges)
    return bounds


def _range(value: Any, where: str) -> Range:
    numbers = (
        [float(v) for v in value]
        if isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        else None
    )
    if numbers is None or not numbers[0] < numbers[1]:
        raise ConfigError(f"{where} must be [low, high], two numbers with low below high")
    if numbers[0] <= 0:
        raise ConfigError(f"{where} must hold positive numbers")
    return numbers[0], numbers[1]


def _actuators(value: Any, where: str) -> ActuatorSettings:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}[actuators] must be a table")
    allowed = {"positions", "pulse_ms_at_1", "pulse_ms_per_position"}
    _reject_unknown(value, allowed, "actuators.", where, ConfigError)
    defaults = ActuatorSettings()
    positions = value.get("positions", defaults.positions)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise ConfigError(f"{where}actuators.positions must be a whole number >= 1")
    numbers = {}
    for name in ("pulse_ms_at_1", "pulse_ms_per_position"):
        number = value.get(name, getattr(defaults, name))
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{where}actuators.{name} must be a number")
        numbers[name] = float(number)
    settings = ActuatorSettings(positions, **numbers)
    if not 0 < settings.duty(1) <= 1 or not 0 < settings.duty(positions) <= 1:
        raise ConfigError(f"{where}actuators: pulses must lie within the 20 ms PWM period")
    return settings


def _stale_assignment(value: Any, where: str) -> StaleAssignmentSettings:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}[stale_assignment] must be a table with policy and max_wait_s")
    _reject_unknown(value, {"policy", "max_wait_s"}, "stale_assignment.", where, ConfigError)
    defaults = StaleAssignmentSettings()
    policy = value.get("policy", defaults.policy)
    if policy not in STALE_POLICIES:
        raise ConfigError(
            f"{where}stale_assignment.policy: {policy!r} is no policy"
            f"{_suggest(str(policy), STALE_POLICIES)}; choose {' or '.join(STALE_POLICIES)}"
        )
    wait = value.get("max_wait_s", defaults.max_wait_s)
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not 0 <= wait <= MAX_ASSIGNMENT_WAIT_S
    ):
        raise ConfigError(
            f"{where}stale_assignment.max_wait_s must be a number of seconds from 0 to "
            f"{MAX_ASSIGNMENT_WAIT_S:g}"
        )
    return StaleAssignmentSettings(policy, float(wait))


def parse_safety(value: Any, where: str = "") -> SafetyLimits:
    """Validates the ``[safety]`` table (missing settings take the defaults).

    Raises:
        ConfigError: naming the setting at fault: an unknown one (with the closest name), a
            limit that is no number, not above 0 or above its ceiling
            (:data:`SAFETY_CEILINGS`), a per-trial volume above the per-session one, an
            unknown ``on_violation``, or a bad ``[safety.parameters]`` range.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}[safety] must be a table of limits (max_reward_ul_per_trial, ...)"
        )
    _reject_unknown(value, set(SAFETY_KEYS), "safety.", where, ConfigError)
    defaults = SafetyLimits()
    numbers: dict[str, Any] = {}
    for key, ceiling in SAFETY_CEILINGS.items():
        number = value.get(key, getattr(defaults, key))
        if key == "max_trials":
            if (
                isinstance(number, bool)
                or not isinstance(number, int)
                or not 1 <= number <= ceiling
            ):
                raise ConfigError(
                    f"{where}safety.max_trials must be a whole number from 1 to {ceiling:g}"
                )
            numbers[key] = number
            continue
        if (
            isinstance(number, bool)
            or not isinstance(number, int | float)
            or not math.isfinite(number)
            or not 0 < number <= ceiling
        ):
            raise ConfigError(
                f"{where}safety.{key} must be a number above 0 and at most {ceiling:g}"
            )
        numbers[key] = float(number)
    if numbers["max_reward_ul_per_trial"] > numbers["max_reward_ul_per_session"]:
        raise ConfigError(
            f"{where}safety.max_reward_ul_per_trial = {numbers['max_reward_ul_per_trial']:g} is "
            f"above safety.max_reward_ul_per_session = "
            f"{numbers['max_reward_ul_per_session']:g}: one reward cannot give more than a "
            "session may"
        )
    action = value.get("on_violation", defaults.on_violation)
    if action not in SAFETY_ACTIONS:
        raise ConfigError(
            f"{where}safety.on_violation: {action!r} is no policy"
            f"{_suggest(str(action), SAFETY_ACTIONS)}; choose {' or '.join(SAFETY_ACTIONS)}"
        )
    return SafetyLimits(
        **numbers,
        parameters=_parameter_ranges(value.get("parameters", {}), where),
        on_violation=action,
    )


def _parameter_ranges(value: Any, where: str) -> dict[str, Range]:
    """``[safety.parameters]``: ``name = [low, high]`` for numeric parameters.

    A name the reach task reads must be one of its numbers; a name it does not read (another
    task's parameter, which the assignment may carry) is allowed unless it is so close to one
    of the task's names that it is a misspelling.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}[safety.parameters] must be a table of name = [low, high]")
    from shaping.rig.task.parameters import ReachParameters  # the task's parameters and their types

    kinds = {f.name: str(f.type).replace(" | None", "") for f in fields(ReachParameters)}
    ranges: dict[str, Range] = {}
    for name, entry in value.items():
        key = f"{where}safety.parameters.{name}"
        kind = kinds.get(name)
        if kind is None:
            close = difflib.get_close_matches(name, list(kinds), n=1, cutoff=0.85)
            if close:
                raise ConfigError(
                    f"{key}: no parameter of the reach task; did you mean {close[0]}? (a name "
                    "of another task's parameter is allowed, but not one this close to the "
                    "reach task's)"
                )
        elif kind not in ("int", "float"):
            what = "true or false" if kind == "bool" else "text"
            raise ConfigError(f"{key}: a range needs a number; {name} is {what}")
        numbers = (
            [float(v) for v in entry]
            if isinstance(entry, list)
            and len(entry) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry)
            else None
        )
        if numbers is None or not numbers[0] <= numbers[1]:
            raise ConfigError(
                f"{key} must be [low, high], two numbers with low at most high "
                f"(e.g. {name} = [2, 10])"
            )
        if not all(math.isfinite(v) for v in numbers):
            raise ConfigError(f"{key} must be [low, high], two finite numbers")
        ranges[name] = (numbers[0], numbers[1])
    return ranges


def _reject_unknown(
    table: Mapping[str, Any],
    allowed: set[str],
    prefix: str,
    where: str,
    error: type[ConfigError],
) -> None:
    for key in table:
        if key not in allowed:
            raise error(
                f"{where}{prefix}{key}: unknown setting{_suggest(key, allowed)}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]}?" if close else ""
