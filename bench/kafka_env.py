"""The benchmark's own Kafka: a broker on its own ports, fresh topics, processor processes.

The broker is started with ``infra/kafka/kafka.sh up`` on 127.0.0.1:45092 (controller 45093)
with its data in a fresh temporary directory, and stopped with ``kafka.sh down``. Everything
started here is stopped by :meth:`KafkaEnv.close`, which ``run`` calls in a ``finally``; the
broker also carries ``SHAPING_OWNER_PID`` so kafka.sh's watchdog stops it if this process dies
without cleaning up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics, wait_for_broker, wait_for_partitions

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
PORT = int(os.environ.get("SHAPING_BENCH_KAFKA_PORT", "45092"))
CONTROLLER_PORT = int(os.environ.get("SHAPING_BENCH_KAFKA_CONTROLLER_PORT", "45093"))
PARTITIONS = 4
BROKER_START_TIMEOUT_S = 600.0  # the very first start may download the broker jars
BROKER_STOP_TIMEOUT_S = 90.0
SERVICE_STOP_TIMEOUT_S = 60.0

T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark could not run (infrastructure failed, or a bounded wait ran out)."""


def kafka_version() -> str:
    """The broker version kafka.sh runs."""
    found = re.search(r"^KAFKA_VERSION=(\S+)", KAFKA_SH.read_text(), re.MULTILINE)
    return found.group(1) if found else "unknown"


def rig_producer(bootstrap: str, client_id: str) -> KafkaProducer:
    """A producer configured like a rig's (KafkaRigTransport): acks=all, idempotent."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_in_flight_requests_per_connection=5,
    )


def topic_reader(bootstrap: str, topics: list[str], client_id: str) -> KafkaConsumer:
    """A consumer without a group, assigned every partition of ``topics``, at the beginning."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    partitions = wait_for_partitions(consumer, list(topics)) or []
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    every_s: float = 0.0,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Calls ``predicate`` until it returns something truthy; BenchError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise BenchError(f"no {what} within {timeout_s:g} s{extra}")
        if every_s:
            time.sleep(every_s)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark process dies (Linux only), so
    a killed benchmark leaves no processor running."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Service:
    """A Python process the benchmark started (a processor or a relay), logging to a file."""

    def __init__(self, workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv],
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with {code}\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        return cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"(no log: {exc})"
        return f"----- {self.log} (last {lines} lines) -----\n" + "\n".join(text)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it ignores it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVICE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class KafkaEnv:
    """A broker started for the benchmark, and the topics and processors made on it."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="shaping-bench-"))
        self.services: list[Service] = []
        self.failed = False
        self._broker_started = False
        self.startup_s = 0.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{PORT}"

    def _script_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SHAPING_KAFKA_PORT": str(PORT),
            "SHAPING_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
            "SHAPING_KAFKA_DATA": str(self.workdir / "kafka-data"),
            "SHAPING_OWNER_PID": str(os.getpid()),
            "PYTHON": sys.executable,
        }

    def _script(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(KAFKA_SH), command],
            env=self._script_env(),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self) -> None:
        for port in (PORT, CONTROLLER_PORT):
            if _port_in_use(port):
                raise BenchError(
                    f"127.0.0.1:{port} is in use, so the benchmark broker cannot start there "
                    "(a leftover benchmark broker?). Choose other ports with "
                    "SHAPING_BENCH_KAFKA_PORT / SHAPING_BENCH_KAFKA_CONTROLLER_PORT."
                )
        print(f"starting the benchmark broker on {self.bootstrap} ...", flush=True)
        began = time.perf_counter()
        self._broker_started = True  # `down` is harmless if `up` failed half way
        try:
            result = self._script("up", BROKER_START_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`kafka.sh up` took longer than {exc.timeout} s") from exc
        if result.returncode != 0:
            self.failed = True
            raise BenchError(
                f"`kafka.sh up` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                f"\nbroker log: {self.workdir / 'kafka-data' / 'kafka.log'}"
            )
        wait_for_broker(self.bootstrap, 60)
        self.startup_s = time.perf_counter() - began

    def broker_cpu_seconds(self) -> float:
        """CPU time the broker's JVM has used so far."""
        pid = (self.workdir / "kafka-data" / "kafka.pid").read_text().strip()
        return cpu_seconds(int(pid))

    def fresh_topics(self) -> TopicNames:
        """Shaping's four topics under a new prefix, created with 4 partitions."""
        names = TopicNames.with_prefix(f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(self.bootstrap, names, partitions=PARTITIONS)
        return names

    def drop_topics(self) -> None:
        """Deletes every topic made so far (not Kafka's own ``__`` topics): each measurement
        makes fresh topics, and the next one should not share the broker with their logs
        (the log cleaner compacting earlier state changelogs, fetch sessions of old
        partitions)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="shaping-bench")
        try:
            names = [name for name in admin.list_topics() if not name.startswith("__")]
            if names:
                admin.delete_topics(names, timeout_ms=30_000)
        finally:
            admin.close()

    def raw_topic(self, partitions: int = PARTITIONS) -> str:
        """A new plain topic for the raw Kafka baselines."""
        name = f"bench-raw-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="shaping-bench")
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
            admin.wait_for_topics([name], timeout_ms=30_000)
        finally:
            admin.close()
        return name

    def start_processor(self, topics: TopicNames) -> Service:
        """``python -m shaping.services.processor`` on ``topics``, set by SHAPING_* variables."""
        processor_id = f"bench-processor-{uuid.uuid4().hex[:8]}"
        env = {
            "SHAPING_BOOTSTRAP": self.bootstrap,
            "SHAPING_TOPIC_PREFIX": topics.events.removesuffix(".events"),
            "SHAPING_PARTITIONS": str(PARTITIONS),
            "SHAPING_PROCESSOR_ID": processor_id,
            "SHAPING_DATA_DIR": str(self.workdir / "data"),
        }
        service = Service(self.workdir, processor_id, ["-m", "shaping.services.processor"], env)
        self.services.append(service)
        return service

    def start_service(self, name: str, argv: list[str]) -> Service:
        service = Service(self.workdir, f"{name}-{uuid.uuid4().hex[:8]}", argv, {})
        self.services.append(service)
        return service

    def stop_service(self, service: Service) -> None:
        code = service.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"warning: {service.name} exited with {code}\n{service.log_tail()}", flush=True)

    def close(self) -> None:
        """Stops every service and the broker; removes the data unless something failed."""
        problems = []
        for service in self.services:
            try:
                service.stop()
            except Exception as exc:  # keep going: the broker must stop too
                problems.append(f"stopping {service.name}: {exc}")
        if self._broker_started:
            try:
                result = self._script("down", BROKER_STOP_TIMEOUT_S)
                if result.returncode != 0:
                    problems.append(f"`kafka.sh down` failed: {result.stdout}{result.stderr}")
            except subprocess.TimeoutExpired:
                problems.append("`kafka.sh down` timed out")
        if problems or (self.failed and any(self.workdir.iterdir())):
            print(f"benchmark files kept in {self.workdir}", flush=True)
            for problem in problems:
                print(f"warning: {problem}", flush=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KafkaEnv:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.failed = True  # keep the logs and broker data for a look
        self.close()
