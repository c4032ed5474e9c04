"""The secured broker (``infra/kafka/kafka.sh up --secure``; docs/security.md): SASL_SSL with
SCRAM-SHA-512, the StandardAuthorizer, and the ACLs of each role.

One secured broker for the module, started by the script on free ports with its own data dir;
what the tests see is what the script set up (certificates, credentials, ACLs). Refusals are
asserted as Kafka's own errors (authentication or authorization), not as timeouts alone.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from shaping.schemas.topics import TopicNames
from shaping.services.adapters import acls
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.kafka import producer as kafka_producer
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import KAFKA_SH, KafkaBroker, start_kafka
from tests.support.ops import free_port
from tests.support.scripts import InfraStartError

PREFIX = "sec"
PROCESSOR_ID = "sec-processor"
RIGS = ("rig-1", "rig-2")
TOPICS = TopicNames.with_prefix(PREFIX)
REFUSE_TIMEOUT_MS = 4000
"""How long a refused client keeps trying before it gives up (kafka-python retries)."""
UNREACHABLE = r"[Bb]ootstrap|NoBrokersAvailable"
"""What kafka-python raises when no broker would talk to it."""


# --- the table of roles (no broker) -----------------------------------------------------


def _ops(role: acls.Role, name: str = "x") -> dict[tuple[str, str, str], set[str]]:
    return {
        (g.resource, g.name, g.pattern): set(g.operations)
        for g in acls.grants(role, name, TOPICS, PROCESSOR_ID)
    }


def test_no_role_but_admin_may_create_delete_or_alter() -> None:
    for role in ("processor", "projector", "operator", "rig", "ingress", "alerts", "notifier"):
        for (resource, name, _), operations in _ops(role).items():
            assert not operations & {"DELETE", "ALTER"}, (role, name)
            assert resource != "cluster", role
            if "CREATE" in operations:  # only the processor's own changelog topics
                assert (role, resource, name) == ("processor", "topic", f"{PROCESSOR_ID}-")
    assert acls.grants("admin", "admin", TOPICS, PROCESSOR_ID) == []


def test_rig_writes_only_its_ingress_topic_and_reads_it_assignments_and_decisions() -> None:
    ops = _ops("rig", "rig-1")
    writes = {name for (_, name, _), o in ops.items() if "WRITE" in o}
    reads = {(resource, name) for (resource, name, _), o in ops.items() if "READ" in o}
    assert writes == {TOPICS.rig_ingress("rig-1")}
    assert reads == {
        ("topic", TOPICS.rig_ingress("rig-1")),
        ("topic", TOPICS.assignments),
        ("topic", TOPICS.decisions),
        ("group", "rig-1."),
    }
    assert ops[("group", "rig-1.", "prefixed")] == {"READ", "DESCRIBE"}


def test_processor_projector_operator_grants() -> None:
    def names(role: acls.Role, operation: str) -> set[str]:
        return {n for (r, n, _), o in _ops(role).items() if r == "topic" and operation in o}

    assert names("processor", "READ") >= {TOPICS.events, TOPICS.commands, TOPICS.curricula}
    assert names("processor", "WRITE") == {
        TOPICS.events,
        TOPICS.accepted,
        TOPICS.decisions,
        TOPICS.assignments,
        TOPICS.dead_letter,
        f"{PROCESSOR_ID}-",
    }
    assert names("projector", "WRITE") == set()
    assert TOPICS.events not in names("projector", "READ")
    assert names("projector", "READ") == {
        TOPICS.accepted,
        TOPICS.decisions,
        TOPICS.assignments,
        TOPICS.dead_letter,
        TOPICS.curricula,
        TOPICS.alerts,
    }
    assert names("operator", "WRITE") == {
        TOPICS.operator_ingress("x"),
        TOPICS.curricula,
        TOPICS.alerts,
    }
    assert names("operator", "READ") == set(TOPICS.all())
    assert names("alerts", "WRITE") == {TOPICS.alerts}
    assert names("alerts", "READ") == {
        TOPICS.events,
        TOPICS.accepted,
        TOPICS.decisions,
        TOPICS.dead_letter,
        TOPICS.alerts,
    }
    assert names("notifier", "WRITE") == set()
    assert names("notifier", "READ") == {TOPICS.alerts}


def test_bad_principal_names_and_roles_are_refused() -> None:
    for bad in ("", "-rig", "rig 1", "rig/1", "a" * 65, "rig;User:admin"):
        with pytest.raises(ValueError, match="principal name"):
            acls.check_name(bad)
    with pytest.raises(ValueError, match="unknown role"):
        acls.grants("root", "x", TOPICS, PROCESSOR_ID)  # type: ignore[arg-type]


# --- the secured broker ----------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    env = {
        "SHAPING_KAFKA_RIGS": " ".join(RIGS),
        "SHAPING_KAFKA_OPERATORS": "operator",
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
    }
    try:
        started = start_kafka(free_port(), free_port(), secure=True, env=env)
    except InfraStartError as exc:
        pytest.fail(f"could not start the secured broker:\n{exc}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in started.credentials("admin").items():
                patch.setenv(key, value)
            ensure_topics(started.bootstrap, TOPICS, partitions=2)
        yield started
    finally:
        started.stop()


def _options(broker: KafkaBroker, name: str, password: str | None = None) -> dict[str, Any]:
    return {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": name,
        "sasl_plain_password": password
        or (broker.secrets_dir / f"{name}.password").read_text().strip(),
        "ssl_cafile": str(broker.secrets_dir / "ca.crt"),
        "request_timeout_ms": 10000,
    }


def _produce(broker: KafkaBroker, name: str, topic: str, **options: Any) -> Any:
    producer = KafkaProducer(**_options(broker, name), acks="all", max_block_ms=10000, **options)
    try:
        return producer.send(topic, key=b"mouse-1", value=uuid4().bytes).get(timeout=10)
    finally:
        producer.close(timeout=5)


def _assert_refused(call: Any, resource: str = "Topic") -> None:
    """``call`` fails with Kafka's authorization error for ``resource`` (Topic, Group or
    Cluster), e.g. TopicAuthorizationFailedError (error 29)."""
    with pytest.raises(Exception) as caught:
        call()
    assert f"{resource}AuthorizationFailed" in f"{type(caught.value).__name__} {caught.value}", (
        repr(caught.value)
    )


@pytest.mark.kafka
def test_secrets_are_private(broker: KafkaBroker) -> None:
    secrets = broker.secrets_dir
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE(broker.data_dir.stat().st_mode) == 0o700
    files = sorted(p.name for p in secrets.iterdir())
    for expected in ("ca.crt", "ca.key", "broker.p12", "truststore.p12", "principals"):
        assert expected in files
    for name in ("admin", "processor", "projector", "operator", *RIGS):
        assert f"{name}.password" in files and f"{name}.env" in files
    for path in [*secrets.iterdir(), broker.data_dir / "server.properties"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # Passwords are random and distinct; the admin's is in server.properties (the broker's own
    # login) and nowhere in the broker's log.
    passwords = {(secrets / f"{n}.password").read_text().strip() for n in ("admin", *RIGS)}
    assert len(passwords) == 1 + len(RIGS)
    assert all(len(p) >= 32 for p in passwords)
    admin_password = (secrets / "admin.password").read_text().strip()
    assert admin_password not in broker.log_file.read_text(errors="replace")
    assert not (secrets / ".format-args").exists()
    properties = (broker.data_dir / "server.properties").read_text()
    assert "allow.everyone.if.no.acl.found=false" in properties
    assert "org.apache.kafka.metadata.authorizer.StandardAuthorizer" in properties
    assert f"listeners=SASL_SSL://127.0.0.1:{broker.port}," in properties
    assert "PLAINTEXT" not in properties


@pytest.mark.kafka
@pytest.mark.parametrize(
    "client",
    [
        pytest.param({}, id="plaintext"),
        pytest.param({"security_protocol": "SSL"}, id="tls-without-sasl"),
        pytest.param({"security_protocol": "SASL_PLAINTEXT"}, id="sasl-without-tls"),
    ],
)
def test_anonymous_clients_are_refused(broker: KafkaBroker, client: dict[str, Any]) -> None:
    options: dict[str, Any] = {"bootstrap_servers": broker.bootstrap, **client}
    if client.get("security_protocol") == "SSL":
        options["ssl_cafile"] = str(broker.secrets_dir / "ca.crt")
    if client.get("security_protocol") == "SASL_PLAINTEXT":  # right password, no TLS
        options.update(
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username="admin",
            sasl_plain_password=(broker.secrets_dir / "admin.password").read_text().strip(),
        )
    with pytest.raises(Exception, match=UNREACHABLE):
        admin = KafkaAdminClient(**options, bootstrap_timeout_ms=REFUSE_TIMEOUT_MS)
        admin.close()


@pytest.mark.kafka
def test_wrong_password_is_refused(broker: KafkaBroker) -> None:
    with pytest.raises(Exception, match=UNREACHABLE):
        KafkaAdminClient(
            **_options(broker, "rig-2", password="not-the-password"),
            bootstrap_timeout_ms=REFUSE_TIMEOUT_MS,
        ).close()
    # The broker says why (its audit log): an authentication failure, not a network problem.
    _wait_for_log(broker, "Failed authentication with", "invalid credentials")


def _wait_for_log(broker: KafkaBroker, *parts: str, timeout_s: float = 10) -> str:
    """The first line of the broker's log holding every one of ``parts``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for line in broker.log_file.read_text(errors="replace").splitlines():
            if all(part in line for part in parts):
                return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no line of {broker.log_file} holds {parts}")
        time.sleep(0.2)


def _tls_to_controller(broker: KafkaBroker, with_certificate: bool) -> str:
    """Open TLS to the controller listener and wait for the broker's verdict."""
    context = ssl.create_default_context(cafile=str(broker.secrets_dir / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(
            broker.secrets_dir / "broker.crt", broker.secrets_dir / "broker.key"
        )
    # An ApiVersions request (v0): the controller answers it once TLS is established.
    body = struct.pack(">hhih", 18, 0, 1, -1)
    with (
        socket.create_connection(("127.0.0.1", broker.controller_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        try:
            tls.sendall(struct.pack(">i", len(body)) + body)
            answer = tls.recv(4)
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}"
        return "answered" if answer else "refused: closed"


@pytest.mark.kafka
def test_controller_listener_needs_a_certificate_from_the_ca(broker: KafkaBroker) -> None:
    assert _tls_to_controller(broker, with_certificate=True) == "answered"
    verdict = _tls_to_controller(broker, with_certificate=False)
    assert verdict.startswith("refused"), verdict
    # A plaintext request gets a TLS alert (record type 21) or nothing, never an answer.
    with socket.create_connection(("127.0.0.1", broker.controller_port), timeout=5) as raw:
        body = struct.pack(">hhih", 18, 0, 1, -1)
        raw.sendall(struct.pack(">i", len(body)) + body)
        try:
            answer = raw.recv(4)
        except ConnectionError:
            answer = b""
        assert answer[:1] in (b"", b"\x15"), answer


@pytest.mark.kafka
def test_rig_writes_its_ingress_topic_and_reads_assignments(broker: KafkaBroker) -> None:
    written = _produce(broker, "rig-1", TOPICS.rig_ingress("rig-1"), enable_idempotence=True)
    assert written.topic == TOPICS.rig_ingress("rig-1")
    assigned = _produce(broker, "processor", TOPICS.assignments, enable_idempotence=True)
    consumer = KafkaConsumer(**_options(broker, "rig-1"), group_id=None)
    try:
        partition = TopicPartition(TOPICS.assignments, assigned.partition)
        consumer.assign([partition])
        consumer.seek(partition, assigned.offset)
        records: list[Any] = []
        deadline = time.monotonic() + 15
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(500).values() for r in batch]
        assert records and records[0].offset == assigned.offset
    finally:
        consumer.close()


@pytest.mark.kafka
@pytest.mark.parametrize(
    "kind", ["assignments", "decisions", "accepted", "dead_letter", "commands", "curricula"]
)
def test_rig_may_not_write_other_topics(broker: KafkaBroker, kind: str) -> None:
    topic = TOPICS.curricula if kind == "curricula" else TOPICS.of_kind(kind)  # type: ignore[arg-type]
    _assert_refused(lambda: _produce(broker, "rig-1", topic, enable_idempotence=True))


@pytest.mark.kafka
def test_denials_are_in_the_brokers_audit_log(broker: KafkaBroker) -> None:
    # rig-2 may see the assignments topic (it reads it), so its Produce request reaches the
    # authorizer, which denies the WRITE and logs it.
    _assert_refused(lambda: _produce(broker, "rig-2", TOPICS.assignments))
    _wait_for_log(
        broker,
        "Principal = User:rig-2 is Denied",
        "WRITE",
        f"Topic:LITERAL:{TOPICS.assignments} ",
    )


@pytest.mark.kafka
def test_rig_may_not_read_the_events_topic(broker: KafkaBroker) -> None:
    consumer = KafkaConsumer(**_options(broker, "rig-2"), group_id=None)
    try:
        consumer.assign([TopicPartition(TOPICS.events, 0)])

        def read() -> None:
            # The rig may not even describe the topic: asking where to read is refused (a
            # poll alone would only log it and return nothing).
            consumer.position(TopicPartition(TOPICS.events, 0))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                consumer.poll(500)

        _assert_refused(read)
    finally:
        consumer.close()


@pytest.mark.kafka
def test_rig_may_neither_delete_nor_create_topics(broker: KafkaBroker) -> None:
    admin = KafkaAdminClient(**_options(broker, "rig-1"))
    try:
        _assert_refused(lambda: admin.delete_topics([TOPICS.assignments]))
        _assert_refused(lambda: admin.create_topics([NewTopic(f"{PREFIX}.forged", 1, 1)]))
        _assert_refused(lambda: admin.create_topics([NewTopic("rig-1.anything", 1, 1)]))
        # A rig sees only its topics.
        assert set(admin.list_topics()) == {
            TOPICS.rig_ingress("rig-1"),
            TOPICS.assignments,
            TOPICS.decisions,
        }
    finally:
        admin.close()
    # And the topics are all still there.
    admin = KafkaAdminClient(**_options(broker, "admin"))
    try:
        assert set(TOPICS.all()) <= set(admin.list_topics())
    finally:
        admin.close()


@pytest.mark.kafka
def test_rig_groups_are_its_own(broker: KafkaBroker) -> None:
    partition = TopicPartition(TOPICS.assignments, 0)

    def commit(group: str) -> None:
        consumer = KafkaConsumer(
            **_options(broker, "rig-1"), group_id=group, enable_auto_commit=False
        )
        try:
            consumer.assign([partition])
            consumer.commit({partition: OffsetAndMetadata(0, "", -1)})
        finally:
            consumer.close()

    commit(f"rig-1.{uuid4().hex[:6]}")
    _assert_refused(lambda: commit(f"rig-2.{uuid4().hex[:6]}"), "Group")
    _assert_refused(lambda: commit(PROCESSOR_ID), "Group")


@pytest.mark.kafka
def test_processor_projector_and_operator(broker: KafkaBroker) -> None:
    # The processor writes its outputs, not what operators publish.
    assert _produce(broker, "processor", TOPICS.decisions, enable_idempotence=True)
    _assert_refused(lambda: _produce(broker, "processor", TOPICS.curricula))
    _assert_refused(lambda: _produce(broker, "processor", TOPICS.commands))
    # The projector writes nothing: an idempotent producer is refused its producer id (that
    # needs WRITE on some topic), a plain one the topic.
    _assert_refused(
        lambda: _produce(broker, "projector", TOPICS.decisions, enable_idempotence=True),
        "Cluster",
    )
    _assert_refused(
        lambda: _produce(broker, "projector", TOPICS.assignments, enable_idempotence=False)
    )
    # The operator writes its ingress topic (its commands) and curricula, and no command
    # straight to the commands topic, no decision or assignment.
    assert _produce(broker, "operator", TOPICS.operator_ingress("operator"))
    assert _produce(broker, "operator", TOPICS.curricula, enable_idempotence=True)
    _assert_refused(lambda: _produce(broker, "operator", TOPICS.commands))
    _assert_refused(lambda: _produce(broker, "operator", TOPICS.assignments))
    _assert_refused(lambda: _produce(broker, "operator", TOPICS.decisions))


@pytest.mark.kafka
def test_kafka_connection_from_the_credentials_file(
    broker: KafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = broker.credentials("operator")
    assert settings["SHAPING_KAFKA_SASL_PASSWORD_FILE"].endswith("operator.password")
    assert "SHAPING_KAFKA_SASL_PASSWORD" not in settings  # the password stays in its file
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SHAPING_KAFKA_SASL_PASSWORD", raising=False)
    connection = KafkaConnection()
    assert connection.bootstrap == broker.bootstrap
    assert connection.security_protocol == "SASL_SSL"
    assert connection.sasl_username == "operator"

    value = uuid4().bytes
    producer = kafka_producer(connection, "test-security-operator")
    try:
        sent = producer.send(TOPICS.curricula, key=b"mouse-7", value=value).get(timeout=10)
    finally:
        producer.close(timeout=5)
    consumer = kafka_consumer(connection, "test-security-operator")
    try:
        partition = TopicPartition(TOPICS.curricula, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        records: list[Any] = []
        deadline = time.monotonic() + 15
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(500).values() for r in batch]
        assert [r.value for r in records[:1]] == [value]
    finally:
        consumer.close()


@pytest.mark.kafka
def test_add_a_rig_then_rotate_its_password(broker: KafkaBroker) -> None:
    added = broker.script("add-principal", "rig-9", "rig", timeout_s=120)
    assert added.returncode == 0, added.stdout + added.stderr
    assert stat.S_IMODE((broker.secrets_dir / "rig-9.password").stat().st_mode) == 0o600
    assert "rig-9 rig" in (broker.secrets_dir / "principals").read_text()
    assert _produce(broker, "rig-9", TOPICS.rig_ingress("rig-9"), enable_idempotence=True)
    _assert_refused(lambda: _produce(broker, "rig-9", TOPICS.assignments))

    old = (broker.secrets_dir / "rig-9.password").read_text().strip()
    rotated = broker.script("rotate", "rig-9", timeout_s=120)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    new = (broker.secrets_dir / "rig-9.password").read_text().strip()
    assert new != old
    assert stat.S_IMODE((broker.secrets_dir / "rig-9.password").stat().st_mode) == 0o600
    assert _produce(broker, "rig-9", TOPICS.rig_ingress("rig-9"))
    with pytest.raises(Exception, match=UNREACHABLE):
        KafkaAdminClient(
            **_options(broker, "rig-9", password=old), bootstrap_timeout_ms=REFUSE_TIMEOUT_MS
        ).close()


@pytest.mark.kafka
def test_bad_requests_to_the_script(broker: KafkaBroker) -> None:
    # A secured data dir never starts without security.
    plain = broker.script("up", env={"SHAPING_KAFKA_SECURE": "0"}, timeout_s=60)
    assert plain.returncode != 0
    assert "set up secured" in plain.stderr
    # Unknown roles and names that are no principal's are refused before anything changes.
    before = (broker.secrets_dir / "principals").read_text()
    for args in (("add-principal", "rig-10", "root"), ("add-principal", "rig 10", "rig")):
        result = broker.script(*args, timeout_s=60)
        assert result.returncode != 0, args
        assert "ERROR" in result.stderr
    assert (broker.secrets_dir / "principals").read_text() == before
    assert broker.script("rotate", "nobody", timeout_s=60).returncode != 0
    # Asking a running secured broker to start again only reprints the credentials.
    again = broker.script("up", "--secure", timeout_s=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout and "operator.env" in again.stdout


def _deployment_certificates(where: Path) -> dict[str, str]:
    """A CA and a broker certificate made outside the script, as a deployment brings them."""
    where.mkdir(mode=0o700)

    def run(*args: str) -> None:
        subprocess.run(args, cwd=where, check=True, capture_output=True, timeout=60)

    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Lab test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    run(
        "openssl",
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/O=Lab/CN=kafka-test",
        "-keyout",
        "broker.key",
        "-out",
        "broker.csr",
    )
    (where / "ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "7",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "broker.pem",
    )
    (where / "store.password").write_text("deployment-store-secret\n")
    (where / "store.password").chmod(0o600)
    run(
        "openssl",
        "pkcs12",
        "-export",
        "-inkey",
        "broker.key",
        "-in",
        "broker.pem",
        "-certfile",
        "ca.pem",
        "-passout",
        "file:store.password",
        "-out",
        "keystore.p12",
    )
    run(
        "keytool",
        "-importcert",
        "-noprompt",
        "-alias",
        "ca",
        "-file",
        "ca.pem",
        "-storetype",
        "PKCS12",
        "-keystore",
        "truststore.p12",
        "-storepass:file",
        "store.password",
    )
    return {
        "SHAPING_KAFKA_SSL_KEYSTORE": str(where / "keystore.p12"),
        "SHAPING_KAFKA_SSL_KEYSTORE_PASSWORD_FILE": str(where / "store.password"),
        "SHAPING_KAFKA_SSL_TRUSTSTORE": str(where / "truststore.p12"),
        "SHAPING_KAFKA_SSL_TRUSTSTORE_PASSWORD_FILE": str(where / "store.password"),
        "SHAPING_KAFKA_SSL_CAFILE": str(where / "ca.pem"),
        # Java's RFC 2253 form of the subject: the last RDN first.
        "SHAPING_KAFKA_BROKER_PRINCIPAL": "User:CN=kafka-test,O=Lab",
    }


@pytest.mark.kafka
def test_a_deployment_brings_its_own_certificates(tmp_path: Path) -> None:
    env = {
        **_deployment_certificates(tmp_path / "certs"),
        "SHAPING_KAFKA_RIGS": "rig-1",
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
    }
    try:
        own = start_kafka(free_port(), free_port(), secure=True, env=env)
    except InfraStartError as exc:
        pytest.fail(f"could not start the broker with the deployment's certificates:\n{exc}")
    try:
        secrets = own.secrets_dir
        assert not (secrets / "ca.key").exists() and not (secrets / "broker.p12").exists()
        assert own.credentials("rig-1")["SHAPING_KAFKA_SSL_CAFILE"] == str(
            tmp_path / "certs" / "ca.pem"
        )
        admin = KafkaAdminClient(
            **{**_options(own, "admin"), "ssl_cafile": str(tmp_path / "certs" / "ca.pem")}
        )
        try:
            admin.create_topics([NewTopic(TOPICS.events, 1, 1)])
            # The ACLs were applied (and the rig's ingress topic made): the rig writes it.
            rig = _options(own, "rig-1")
            rig["ssl_cafile"] = str(tmp_path / "certs" / "ca.pem")
            producer = KafkaProducer(**rig, acks="all", max_block_ms=10000)
            try:
                assert producer.send(TOPICS.rig_ingress("rig-1"), b"x").get(timeout=10)
            finally:
                producer.close(timeout=5)
        finally:
            admin.close()
    finally:
        own.stop()


@pytest.mark.kafka
def test_deployment_certificates_must_come_complete(tmp_path: Path) -> None:
    data = tmp_path / "kafka-data"
    env = {
        "SHAPING_KAFKA_DATA": str(data),
        "SHAPING_KAFKA_PORT": str(free_port()),
        "SHAPING_KAFKA_CONTROLLER_PORT": str(free_port()),
        "SHAPING_KAFKA_SSL_KEYSTORE": str(tmp_path / "keystore.p12"),
    }
    result = subprocess.run(
        ["bash", str(KAFKA_SH), "up", "--secure"],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "SHAPING_KAFKA_BROKER_PRINCIPAL must be set too" in result.stderr
    assert not (data / "kafka.pid").exists()


# --- the services on the secured broker -----------------------------------------------------


def test_the_faust_processor_answers_an_operators_command_and_a_rig_cannot_enrol(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    """The processor (faust, with its changelogs and consumer group) runs as its principal; an
    operator's enrolment (through its ingress topic and the ingress gate) is answered; a rig's
    attempt fails with a readable error, sends nothing and leaves no trace on the events
    topic."""
    from tests.support.kafka import ingress_gate
    from tests.support.processes import shaping_process

    common = {
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
        "SHAPING_PARTITIONS": "2",
        "SHAPING_DATA_DIR": str(tmp_path / "data"),
    }

    def shaping(principal: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **common, **broker.credentials(principal)}
        return subprocess.run(
            [sys.executable, "-m", "shaping.services.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    log = tmp_path / "processor.log"
    processor_env = {**common, **broker.credentials("processor")}
    with (
        ingress_gate(broker, PREFIX, tmp_path / "ingress.log"),
        shaping_process(["processor"], log, processor_env) as processor,
    ):
        answered = shaping(
            "operator",
            "enroll",
            "SEC-M1",
            "--curriculum",
            "basic-shaping",
            "--wait",
            "60",
        )
        assert answered.returncode == 0, answered.stderr + log.read_text(errors="replace")
        assert "enrolled SEC-M1 on basic-shaping (event " in answered.stdout
        assert f"{TOPICS.events}[" in answered.stdout
        assert processor.poll() is None, log.read_text(errors="replace")

        refused = shaping(
            "rig-1",
            "enroll",
            "SEC-M2",
            "--curriculum",
            "basic-shaping",
            "--wait",
            "5",
        )
        assert refused.returncode != 0
        assert "Traceback" not in refused.stderr
        assert "may not describe them" in refused.stderr or "authoriz" in refused.stderr.lower()

    admin = {**broker.credentials("admin")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in admin.items():
            patch.setenv(key, value)
        reader = kafka_consumer(KafkaConnection(), "sec-audit", consumer_timeout_ms=3000)
        try:
            parts = [TopicPartition(TOPICS.commands, p) for p in range(2)]
            reader.assign(parts)
            reader.seek_to_beginning(*parts)
            keys = {record.key for record in reader}
        finally:
            reader.close()
    # (other tests of this module write to the commands topic too)
    assert b"SEC-M1" in keys and b"SEC-M2" not in keys
