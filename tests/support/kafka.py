"""Start and stop a real single-node Kafka broker (infra/kafka/kafka.sh) for tests.

The test broker listens on 127.0.0.1:39092 (controller 39093) unless
SHAPING_TEST_KAFKA_PORT / SHAPING_TEST_KAFKA_CONTROLLER_PORT say otherwise, and
keeps its data in a fresh temporary directory that is removed on stop (set
SHAPING_TEST_KEEP_DATA=1 to keep it). The broker jars are cached in the normal
cache (``$SHAPING_CACHE`` or ``.cache/``), so only the first run downloads them.

``start_kafka(secure=True)`` starts the script's secured mode instead (SASL_SSL with
SCRAM-SHA-512, ACLs; docs/security.md): the principals' credentials are then in
:attr:`KafkaBroker.secrets_dir`, one env file each (:meth:`KafkaBroker.credentials`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from tests.support.scripts import (
    REPO,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    InfraStartError,
    describe_failure,
    env_port,
    make_temp_dir,
    port_in_use,
    remove_dir,
    run_script,
)

KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
TEST_PARTITIONS = 4
"""Partitions of each test topic (the ``kafka_topics`` fixture); services the tests start are
told the same number."""
DEFAULT_TEST_PORT = 39092
DEFAULT_TEST_CONTROLLER_PORT = 39093


@dataclass
class KafkaBroker:
    port: int
    controller_port: int
    base_dir: Path
    secure: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for the script (principals, topic prefix... of the secured mode)."""
    stopped: bool = field(default=False, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "kafka-data"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    @property
    def secrets_dir(self) -> Path:
        """Where the secured mode keeps the CA, the stores and the principals' credentials."""
        return self.data_dir / "secrets"

    def env(self) -> dict[str, str]:
        env = {
            "SHAPING_KAFKA_PORT": str(self.port),
            "SHAPING_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "SHAPING_KAFKA_DATA": str(self.data_dir),
            # Safety net: the broker goes away even if this process is killed.
            "SHAPING_OWNER_PID": str(os.getpid()),
        }
        if self.secure:
            env["SHAPING_KAFKA_SECURE"] = "1"
        return {**env, **self.extra_env}

    def credentials(self, principal: str) -> dict[str, str]:
        """The settings (``SHAPING_BOOTSTRAP``, ``SHAPING_KAFKA_*``) of a principal of a secured
        broker, read from the env file the script wrote for it."""
        if not self.secure:
            raise ValueError("a plaintext broker has no credentials")
        settings: dict[str, str] = {}
        path = self.secrets_dir / f"{principal}.env"
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip("'")
        return settings

    def script(
        self, *args: str, env: dict[str, str] | None = None, timeout_s: float = START_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kafka.sh ARGS...`` with this broker's environment (and ``env`` on top)."""
        return subprocess.run(
            ["bash", str(KAFKA_SH), *args],
            env={**os.environ, "PYTHON": sys.executable, **self.env(), **(env or {})},
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        result = run_script(KAFKA_SH, "down", self.env(), STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise InfraStartError(describe_failure("stopping Kafka", result))
        remove_dir(self.base_dir)


def start_kafka(
    port: int | None = None,
    controller_port: int | None = None,
    *,
    secure: bool = False,
    env: dict[str, str] | None = None,
) -> KafkaBroker:
    """Start a fresh broker and return it once it answers; raise InfraStartError if not.

    Args:
        port, controller_port: the listeners' ports (default: the test ports above).
        secure: start the secured mode (``SHAPING_KAFKA_SECURE=1``); the broker is ready once
            its ACLs are applied.
        env: more environment for the script (``SHAPING_KAFKA_RIGS``, ``SHAPING_TOPIC_PREFIX``,
            ``SHAPING_PROCESSOR_ID``...).
    """
    port = port or env_port("SHAPING_TEST_KAFKA_PORT", DEFAULT_TEST_PORT)
    controller_port = controller_port or env_port(
        "SHAPING_TEST_KAFKA_CONTROLLER_PORT", DEFAULT_TEST_CONTROLLER_PORT
    )
    for p in (port, controller_port):
        if port_in_use(p):
            raise InfraStartError(
                f"127.0.0.1:{p} is already in use, so the test broker cannot start there. "
                "Stop whatever listens there (a leftover test broker?) or choose other ports "
                "with SHAPING_TEST_KAFKA_PORT / SHAPING_TEST_KAFKA_CONTROLLER_PORT."
            )
    broker = KafkaBroker(
        port, controller_port, make_temp_dir("shaping-test-kafka-"), secure, dict(env or {})
    )
    try:
        result = run_script(KAFKA_SH, "up", broker.env(), START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        broker.stop()
        raise InfraStartError(f"`kafka.sh up` took longer than {exc.timeout} s") from exc
    if result.returncode != 0:
        # Keep the data dir: its kafka.log explains the failure.
        run_script(KAFKA_SH, "down", broker.env(), STOP_TIMEOUT_S)
        broker.stopped = True
        raise InfraStartError(
            describe_failure("starting Kafka", result) + f"\n(broker log: {broker.log_file})"
        )
    if not (broker.data_dir / "kafka.pid").exists():
        broker.stop()
        raise InfraStartError(
            f"`kafka.sh up` succeeded but did not start a broker from {broker.data_dir}:\n"
            + result.stdout
        )
    return broker


# --- principals of a secured broker (docs/security.md) ------------------------------------------


def principal_options(
    broker: KafkaBroker, name: str, password: str | None = None
) -> dict[str, Any]:
    """kafka-python's options for principal ``name`` of a secured ``broker`` (its password
    from the script's file unless ``password`` is given)."""
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


def produce_as(
    broker: KafkaBroker,
    name: str,
    topic: str,
    value: bytes | None = None,
    key: bytes | None = b"mouse-1",
    **options: Any,
) -> Any:
    """Writes one record to ``topic`` as principal ``name`` (idempotent, ``acks=all``) and
    returns its metadata; Kafka's refusal is raised as it comes."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        **principal_options(broker, name),
        acks="all",
        enable_idempotence=True,
        max_block_ms=10000,
        **options,
    )
    try:
        return producer.send(topic, key=key, value=value or uuid4().bytes).get(timeout=15)
    finally:
        producer.close(timeout=5)


def assert_refused(call: Callable[[], object], resource: str = "Topic") -> None:
    """``call`` fails with Kafka's authorization error for ``resource`` (Topic, Group or
    Cluster), e.g. TopicAuthorizationFailedError (error 29), not with a timeout alone."""
    try:
        call()
    except Exception as exc:  # the refusal is what we want
        text = f"{type(exc).__name__} {exc}"
        assert f"{resource}AuthorizationFailed" in text, repr(exc)
    else:
        raise AssertionError(f"Kafka did not refuse it ({resource} authorization)")


def read_topic(broker: KafkaBroker, topic: str, principal: str = "admin") -> list[Any]:
    """Every record of ``topic`` from its start to its end now, read as ``principal``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**principal_options(broker, principal), group_id=None)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end as {principal}")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


@contextmanager
def ingress_gate(
    broker: KafkaBroker,
    prefix: str,
    log_path: Path,
    metrics_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs ``shaping ingress run`` as the ``ingress`` principal of a secured ``broker`` for
    the topics of ``prefix`` (the gate a secured deployment needs between rigs or operators
    and the processor); stops it at the end."""
    from tests.support.processes import shaping_process

    args = ["ingress", "run"]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]
    gate_env = {
        **broker.credentials("ingress"),
        "SHAPING_TOPIC_PREFIX": prefix,
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with shaping_process(args, log_path, gate_env) as proc:
        yield proc
