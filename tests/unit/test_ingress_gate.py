"""The ingress gate's judgement (services/ingress/gate.py), without Kafka: a rig's topic
forwards only that rig's session facts, an operator's only that operator's commands, and
everything else becomes one readable dead letter that says where the record was."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shaping.rig.config import load_config
from shaping.rig.errors import ConfigError
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.commands import EnrolMouse, OverrideStage
from shaping.schemas.events import AssignmentIssued, EventRejected, MouseEnrolled
from shaping.schemas.topics import TopicNames, ingress_spec, topic_specs
from shaping.services.adapters import acls
from shaping.services.adapters.settings import Settings
from shaping.services.ingress.gate import Forward, IngressGate, Reject
from shaping.services.operator.interventions import command_topic
from tests.support.builders import assignment_issued
from tests.support.rig import write_config
from tests.support.story import T0, session, trials

CODEC = default_codec()
TOPICS = TopicNames.with_prefix("lab")
RIG_1 = TOPICS.rig_ingress("rig-1")
ADA = TOPICS.operator_ingress("ada")


def gate(max_age: timedelta | None = timedelta(hours=1)) -> IngressGate:
    return IngressGate(TOPICS, CODEC, max_age)


def enrol(by: str = "ada", mouse: str = "M1") -> EnrolMouse:
    return EnrolMouse(
        mouse_id=mouse, requested_by=by, requested_at=T0, curriculum_name="basic-shaping"
    )


def record(message: object, key: str | None = "M1") -> tuple[bytes | None, bytes]:
    return (None if key is None else encode_key(key)), CODEC.encode(message)  # type: ignore[arg-type]


# --- topic names --------------------------------------------------------------------------


def test_ingress_topics_are_named_after_their_principal() -> None:
    assert RIG_1 == "lab.rig.rig-1"
    assert ADA == "lab.operator.ada"
    assert TOPICS.parse_ingress(RIG_1) == ("rig", "rig-1")
    assert TOPICS.parse_ingress("lab.operator.a.b") == ("operator", "a.b")
    for other in ("lab.events", "lab.rig.", "shaping.rig.rig-1", "lab.rig.-x", "labXrig.x"):
        assert TOPICS.parse_ingress(other) is None, other
    assert TOPICS.ingress_group == "lab-ingress"
    for bad in ("", "rig 1", "rig/1", "-rig", "a" * 65, "rig;x"):
        with pytest.raises(ValueError, match="principal name"):
            TOPICS.rig_ingress(bad)


def test_an_ingress_topic_is_laid_out_like_the_events_topic() -> None:
    events = next(s for s in topic_specs(TOPICS, 3) if s.name == TOPICS.events)
    spec = ingress_spec(RIG_1, 3)
    assert (spec.partitions, dict(spec.configs)) == (events.partitions, dict(events.configs))
    assert spec.configs["message.timestamp.type"] == "LogAppendTime"


def test_rigs_and_operators_write_only_their_ingress_topic() -> None:
    def grants(role: acls.Role, name: str) -> dict[str, set[str]]:
        return {
            g.name: set(g.operations)
            for g in acls.grants(role, name, TOPICS, "lab-processor")
            if g.resource == "topic"
        }

    rig = grants("rig", "rig-1")
    assert {t for t, ops in rig.items() if "WRITE" in ops} == {RIG_1}
    assert rig[RIG_1] == {"WRITE", "READ", "DESCRIBE"}
    operator = grants("operator", "ada")
    # besides its ingress topic: curricula, and alerts (``shaping alerts ack``), neither of
    # which the processor reads as training input
    writes = {t for t, ops in operator.items() if "WRITE" in ops}
    assert writes == {ADA, TOPICS.curricula, TOPICS.alerts}
    assert TOPICS.events not in writes and TOPICS.commands not in writes
    gate_grants = {
        (g.resource, g.name, g.pattern): set(g.operations)
        for g in acls.grants("ingress", "ingress", TOPICS, "lab-processor")
    }
    assert gate_grants == {
        ("topic", TOPICS.events, "literal"): {"WRITE", "DESCRIBE"},
        ("topic", TOPICS.commands, "literal"): {"WRITE", "DESCRIBE"},
        ("topic", TOPICS.dead_letter, "literal"): {"WRITE", "DESCRIBE"},
        ("topic", "lab.rig.", "prefixed"): {"READ", "DESCRIBE"},
        ("topic", "lab.operator.", "prefixed"): {"READ", "DESCRIBE"},
        ("group", "lab-ingress", "literal"): {"READ", "DESCRIBE"},
    }
    assert acls.ingress_topic("processor", "processor", TOPICS) is None


# --- a rig's topic --------------------------------------------------------------------------


def test_a_rigs_own_session_is_forwarded_to_the_events_topic() -> None:
    events = session("M1", "M1-s1", trials(correct=2, miss=1))
    for event in events:
        key, value = record(event)
        verdict = gate().judge(RIG_1, key, value)
        assert isinstance(verdict, Forward), verdict
        assert verdict.target == "events" and verdict.message == event
        assert gate().target_topic(verdict) == TOPICS.events


def test_a_rig_speaking_as_another_rig_is_refused_with_a_readable_reason() -> None:
    started = session("M1", "M1-s1", [])[0].model_copy(update={"rig_id": "rig-2"})
    key, value = record(started)
    verdict = gate().judge(RIG_1, key, value)
    assert isinstance(verdict, Reject)
    assert verdict.kind == "impersonation" and verdict.error_kind == "invalid"
    assert verdict.reason.startswith("rig 'rig-1' may not publish events as rig 'rig-2'")

    anonymous = started.model_copy(update={"rig_id": None})
    verdict = gate().judge(RIG_1, *record(anonymous))
    assert isinstance(verdict, Reject) and "as no rig" in verdict.reason


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(assignment_issued("M1", "s1_habituation", session_number=2), id="assignment"),
        pytest.param(
            MouseEnrolled(
                mouse_id="M1", occurred_at=T0, curriculum_name="basic-shaping", rig_id="rig-1"
            ),
            id="enrolment",
        ),
        pytest.param(enrol(by="rig-1"), id="command"),
    ],
)
def test_a_rig_may_publish_only_session_facts(message: object) -> None:
    verdict = gate().judge(RIG_1, *record(message))
    assert isinstance(verdict, Reject) and verdict.kind == "wrong_type"
    name = getattr(message, "command_type", None) or getattr(message, "event_type", "")
    assert verdict.reason.startswith(f"rig 'rig-1' may not publish {name}")
    assert "SessionStarted" in verdict.reason


def test_a_record_without_its_mouse_as_key_is_refused() -> None:
    event = session("M1", "M1-s1", [])[0]
    for key in (None, "M2"):
        verdict = gate().judge(RIG_1, *record(event, key))
        assert isinstance(verdict, Reject) and verdict.kind == "key", key
        assert "must be the mouse id 'M1'" in verdict.reason


@pytest.mark.parametrize(
    "value",
    [b"", b"not avro at all", b"\xc3\x01" + b"\x00" * 8 + b"x", b"\x00" * 900_000, None],
)
def test_undecodable_bytes_are_refused_and_the_dead_letter_keeps_a_bounded_copy(
    value: bytes | None,
) -> None:
    verdict = gate().judge(RIG_1, b"M1", value)
    assert isinstance(verdict, Reject) and verdict.kind == "undecodable", verdict
    rejected = gate().dead_letter(verdict, b"M1", value, RIG_1, 3, 17)
    assert rejected.source_topic == RIG_1
    assert (rejected.source_partition, rejected.source_offset) == (3, 17)
    assert rejected.rejected_by == "ingress" and rejected.error_kind == "undecodable"
    assert rejected.mouse_id == "M1" and rejected.rig_id == "rig-1"
    assert rejected.original_size == len(value or b"")
    assert len(rejected.original_value) <= 65_536
    # A redelivered record gives the same dead letter id.
    again = gate().dead_letter(verdict, b"M1", value, RIG_1, 3, 17)
    assert again.event_id == rejected.event_id
    # It encodes: the runner can always write it.
    topic, key, encoded = gate().dead_letter_record(verdict, b"M1", value, RIG_1, 3, 17)
    assert (topic, key) == (TOPICS.dead_letter, b"M1")
    assert isinstance(CODEC.decode(encoded), EventRejected)


def test_the_dead_letter_of_an_impersonation_names_the_real_author() -> None:
    started = session("M1", "M1-s1", [])[0].model_copy(update={"rig_id": "rig-2"})
    key, value = record(started)
    verdict = gate().judge(RIG_1, key, value)
    assert isinstance(verdict, Reject)
    rejected = gate().dead_letter(verdict, key, value, RIG_1, 0, 5)
    assert rejected.rig_id == "rig-1"  # who wrote it, not who it claimed to be
    assert rejected.causation_id == started.event_id
    assert rejected.session_id == "M1-s1"
    assert rejected.occurred_at == started.occurred_at
    assert rejected.original_value == value


def test_a_key_that_is_no_id_gives_an_unknown_mouse() -> None:
    verdict = gate().judge(RIG_1, b"\xff\x00", b"junk")
    assert isinstance(verdict, Reject)
    assert gate().dead_letter(verdict, b"\xff\x00", b"junk", RIG_1, 0, 0).mouse_id == "unknown"


# --- an operator's topic ------------------------------------------------------------------


def test_an_operators_own_command_is_forwarded_to_the_commands_topic() -> None:
    command = enrol()
    verdict = gate().judge(ADA, *record(command), timestamp=T0, now=T0 + timedelta(seconds=3))
    assert isinstance(verdict, Forward)
    assert verdict.target == "commands" and verdict.message == command
    assert gate().target_topic(verdict) == TOPICS.commands


def test_an_operator_speaking_as_another_is_refused() -> None:
    command = OverrideStage(
        mouse_id="M1",
        requested_by="mallory",
        requested_at=T0,
        to_stage="s2_reach",
        reason="forged",
    )
    verdict = gate().judge(ADA, *record(command))
    assert isinstance(verdict, Reject) and verdict.kind == "impersonation"
    assert verdict.reason.startswith("operator 'ada' may not send commands as 'mallory'")
    rejected = gate().dead_letter(verdict, b"M1", CODEC.encode(command), ADA, 1, 2)
    assert rejected.causation_id == command.command_id and rejected.rig_id is None


def test_an_operator_may_not_publish_events() -> None:
    forged: AssignmentIssued = assignment_issued("M1", "s1_habituation", session_number=2)
    verdict = gate().judge(ADA, *record(forged))
    assert isinstance(verdict, Reject) and verdict.kind == "wrong_type"
    assert "operator 'ada' may not publish the event AssignmentIssued" in verdict.reason


def test_a_command_that_waited_too_long_at_the_gate_is_refused_as_clock() -> None:
    command = enrol()
    taken = datetime(2030, 1, 1, tzinfo=UTC)
    late = gate(timedelta(minutes=10)).judge(
        ADA, *record(command), timestamp=taken, now=taken + timedelta(minutes=11)
    )
    assert isinstance(late, Reject) and late.kind == "stale" and late.error_kind == "clock"
    assert "660 s after the broker took it" in late.reason
    on_time = gate(timedelta(minutes=10)).judge(
        ADA, *record(command), timestamp=taken, now=taken + timedelta(minutes=9)
    )
    assert isinstance(on_time, Forward)
    unchecked = gate(None).judge(
        ADA, *record(command), timestamp=taken, now=taken + timedelta(days=9)
    )
    assert isinstance(unchecked, Forward)


def test_a_topic_that_is_no_ingress_topic_is_refused_and_nothing_raises() -> None:
    verdict = gate().judge(TOPICS.events, *record(enrol()))
    assert isinstance(verdict, Reject) and verdict.kind == "topic"

    class Broken:
        def decode_message(self, value: bytes | None) -> object:
            raise RuntimeError("boom")

    broken = IngressGate(TOPICS, Broken(), None)  # type: ignore[arg-type]
    verdict = broken.judge(RIG_1, b"M1", b"x")
    assert isinstance(verdict, Reject) and verdict.kind == "failed"
    assert "RuntimeError" in verdict.reason and verdict.error_kind == "failed"


# --- who writes where ---------------------------------------------------------------------------


def _rig_config(folder: Path, broker: str) -> Path:
    secrets = folder / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "rig.password").write_text("s3cret")
    (secrets / "rig.password").chmod(0o600)
    (secrets / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    path = write_config(folder, prefix="lab")
    text = path.read_text().replace("[broker]\n", f"[broker]\n{broker.strip()}\n", 1)
    path.write_text(text)
    return path


SECURED = """
security_protocol = "SASL_SSL"
sasl_username = "rig-1"
sasl_password_file = "secrets/rig.password"
ssl_cafile = "secrets/ca.crt"
"""


def test_a_secured_rig_writes_its_ingress_topic_and_a_plaintext_one_the_events_topic(
    tmp_path: Path,
) -> None:
    secured = load_config(_rig_config(tmp_path / "a", SECURED))
    assert secured.kafka_security.ingress
    assert secured.link.events_topic(TOPICS) == RIG_1
    assert "through its ingress topic" in secured.kafka_security.describe()
    opted_out = load_config(_rig_config(tmp_path / "b", SECURED + "ingress = false\n"))
    assert opted_out.link.events_topic(TOPICS) == TOPICS.events
    plain = load_config(_rig_config(tmp_path / "c", ""))
    assert not plain.kafka_security.ingress
    assert plain.link.events_topic(TOPICS) == TOPICS.events


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ("ingress = true", 'broker.ingress needs security_protocol = "SASL_SSL"'),
        (SECURED + 'ingress = "yes"', "broker.ingress must be true or false"),
        (
            SECURED.replace('"rig-1"', '"rig-2"'),
            "broker.sasl_username 'rig-2' is not rig_id 'rig-1'",
        ),
    ],
)
def test_a_wrong_ingress_setting_is_refused_at_load(
    tmp_path: Path, broker: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(_rig_config(tmp_path, broker))


def test_an_operators_commands_go_to_its_ingress_topic_when_it_has_a_principal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.delenv(f"SHAPING_KAFKA_{key}", raising=False)
    monkeypatch.delenv("SHAPING_KAFKA_SASL_PASSWORD_FILE", raising=False)
    plain = Settings(topic_prefix="lab")
    assert command_topic(plain) == TOPICS.commands
    monkeypatch.setenv("SHAPING_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("SHAPING_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("SHAPING_KAFKA_SASL_USERNAME", "ada")
    monkeypatch.setenv("SHAPING_KAFKA_SASL_PASSWORD", "x")
    assert command_topic(Settings(topic_prefix="lab")) == ADA


@pytest.mark.parametrize(
    ("requested_by", "forwarded"),
    [
        ("ada/alice", True),  # ada's service acting for the person logged in to it
        ("ada", True),
        ("ada/", False),
        ("ada/  ", False),
        ("mallory/ada", False),
        ("adam/x", False),
        ("/ada", False),
    ],
)
def test_a_service_may_act_for_a_person_only_under_its_own_name(
    requested_by: str, forwarded: bool
) -> None:
    command = OverrideStage(
        mouse_id="M1",
        requested_by=requested_by,
        requested_at=T0,
        to_stage="s2_reach",
        reason="web form",
    )
    verdict = gate().judge(ADA, *record(command), timestamp=T0, now=T0)
    assert isinstance(verdict, Forward) is forwarded, verdict
