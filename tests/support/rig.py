"""Helpers for the rig tests: a config file, cached assignments, a display that keeps what it
is shown, older releases' wire formats, and the forged assignment of the safety tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shaping.rig.config import RigConfig, load_config
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec
from shaping.schemas.events import AssignmentIssued

PINS: dict[str, Any] = {
    "cue_left": 7,
    "cue_right": 8,
    "touch_left": 14,
    "touch_right": 15,
    "valve_left": 6,
    "valve_right": 9,
    "paw_left": 12,
    "paw_right": 13,
    "sync": 27,
    "actuator_left": 2,
    "actuator_right": 4,
}
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CODEC = default_codec()
"""The codec the rig tests build their stores, drainers and followers with."""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_config(
    folder: Path,
    *,
    mice: list[str] | None = None,
    bootstrap: str = "127.0.0.1:1",
    prefix: str = "shaping",
    pins: dict[str, Any] | None = None,
    valves: dict[str, float] | None = None,
    extra: str = "",
) -> Path:
    """Writes a rig.toml into ``folder`` and returns its path."""
    lines = [
        'rig_id = "rig-1"',
        f"mice = {toml_value(mice if mice is not None else ['M001', 'M002'])}",
        'state_dir = "state"',
        extra,
        "[broker]",
        f'bootstrap = "{bootstrap}"',
        f'topic_prefix = "{prefix}"',
        "[pins]",
        *(f"{name} = {toml_value(pin)}" for name, pin in (pins or PINS).items()),
    ]
    for valve, rate in (valves if valves is not None else {"left": 1e-4, "right": 1e-4}).items():
        lines += [f"[valves.{valve}]", f"ml_per_ms = {rate!r}"]
    path = folder / "rig.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_in(folder: Path, **kwargs: Any) -> RigConfig:
    return load_config(write_config(folder, **kwargs))


def assignment(
    mouse: str = "M001", parameters: dict[str, Any] | None = None, session_number: int = 1
) -> AssignmentIssued:
    return AssignmentIssued(
        event_id=f"assignment-{mouse}-{session_number}",
        mouse_id=mouse,
        occurred_at=START,
        stage="s1_habituation",
        parameters=parameters if parameters is not None else {"session_minutes": 20},
        curriculum_name="basic-shaping",
        curriculum_version="0.1.0",
        reason="enrolled",
        sessions_at_stage=0,
        session_number=session_number,
    )


def seed_cache(config: RigConfig, *assignments: AssignmentIssued) -> RigStore:
    store = RigStore(config.store_path, codec=CODEC)
    for item in assignments:
        store.save_assignment(item)
    return store


class FakeDisplay:
    """A display that keeps everything."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.trials = 0
        self.resumed_at: int | None = None

    def message(self, text: str) -> None:
        self.messages.append(text)

    def session_started(self, started: Any, params: Any, resumed_at: int | None) -> None:
        self.resumed_at = resumed_at

    def trial(self, progress: Any, stage: str) -> None:
        self.trials += 1

    def session_ended(self, ended: Any, state: Any) -> None:
        self.messages.append(f"ended {ended.end_reason}")

    def decision(self, decision: Any, assignment: Any) -> None:
        self.messages.append("decision")


def encode_as(event: Any, version: int) -> bytes:
    """``event`` on the wire as a writer of schema ``version`` of its type would send it (the
    fields that version lacks left out): what an older release produces."""
    import io

    import fastavro

    from shaping.schemas.codec import MAGIC, load_schema_versions

    schema = next(
        v
        for v in load_schema_versions()
        if v.event_type == event.event_type and v.version == version
    )
    dumped = event.model_dump()
    record = {f["name"]: dumped[f["name"]] for f in schema.raw["fields"]}
    record["schema_version"] = version
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema.parsed, record, strict=True)
    return MAGIC + schema.fingerprint + out.getvalue()


def older_rig_codec(event_type: str = "AssignmentIssued", known_up_to: int = 1) -> Any:
    """The codec of a rig release that knows ``event_type`` only up to ``known_up_to``."""
    from shaping.schemas.codec import EventCodec, load_schema_versions

    return EventCodec(
        v
        for v in load_schema_versions()
        if not (v.event_type == event_type and v.version > known_up_to)
    )


# -- the safety tests' attack ---------------------------------------------------------------

SAFE = {"session_minutes": 5, "iti_min_s": 2.0, "iti_max_s": 3.0, "reward_volume_ul": 3.0}
ATTACK = {"reward_volume_ul": 500.0, "session_minutes": 600, "max_trials": 5000}
LAST_SAFE = '[safety]\non_violation = "last_safe"\n'


def forged(mouse: str = "M001", session_number: int = 2, **update: Any) -> AssignmentIssued:
    """The attack's record: what the processor would write, with harmful parameters."""
    return assignment(mouse, {**SAFE, **ATTACK}, session_number).model_copy(
        update={"event_id": f"forged-{mouse}-{session_number}", "reason": "progress", **update}
    )
