"""`make stack-up` / `make stack-down`: the whole stack as local processes (Kafka, PostgreSQL,
topics, processor, projector, Prometheus), started by infra/stack.sh on non-default ports set
through the environment, secured by default (Kafka SASL_SSL with ACLs, PostgreSQL passwords,
each service as its own principal, the operator's credentials in a 0600 file), used by
simulated rigs, and stopped without leaving anything behind."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from typer.testing import CliRunner

from shaping.rig.link.connection import KafkaLink, KafkaSecurity
from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from tests.support.ops import STACK_SH, free_ports, port_open, prom_value, read_pid, run
from tests.support.processes import wait_until
from tests.support.receivers import Inbox, Mailbox
from tests.support.scripts import REPO, make_temp_dir, remove_dir
from tests.support.wiring import sql_store
from tests.web.conftest import csrf_of

pytestmark = [pytest.mark.e2e]

SERVICES = ("ingress", "processor", "projector", "alerts", "notifier", "web")
"""The stack's services (the notifier runs when given a routing file)."""
PLAN = LabPlan(n_mice=2, n_rigs=2, n_days=2, seed=9)
REFUSE_TIMEOUT_MS = 4000


def _anonymous_clients_are_refused(bootstrap: str, ca: Path) -> None:
    """A client without credentials gets nowhere: plaintext, or TLS without SASL."""
    for options in ({}, {"security_protocol": "SSL", "ssl_cafile": str(ca)}):
        with pytest.raises(Exception, match=r"[Bb]ootstrap|NoBrokersAvailable"):
            client = KafkaAdminClient(
                bootstrap_servers=bootstrap, bootstrap_timeout_ms=REFUSE_TIMEOUT_MS, **options
            )
            client.close()
        with pytest.raises(Exception, match=r"[Bb]ootstrap|NoBrokersAvailable"):
            KafkaProducer(bootstrap_servers=bootstrap, **options).close()


def _reader_url(stack: Path, port: str) -> str:
    """The read-only role's URL with its password (a test may read the stack's secrets)."""
    password = (stack / "postgres" / "secrets" / "shaping_reader.password").read_text().strip()
    return f"postgresql+psycopg://shaping_reader:{password}@127.0.0.1:{port}/shaping"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


ROUTING = """\
smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: shaping@lab.test}}
people:
  keeper: {{email: keeper@lab.test, webhook: {{url: "{url}/chat", style: slack}}}}
subscriptions:
  - {{people: [keeper], scopes: [mouse], min_severity: attention}}
"""
"""The lab's routing file: the keeper hears of every mouse alert by email and chat."""


def test_stack_up_runs_the_lab_and_stack_down_leaves_nothing(
    smtp_server: tuple[int, Mailbox], http_receiver: tuple[str, Inbox]
) -> None:
    # Not pytest's tmp_path: PostgreSQL runs as the postgres user and must reach its data.
    base = make_temp_dir("shaping-test-stack-")
    env, ports = _stack_env(base)
    env["SHAPING_PROMETHEUS_SCRAPE_INTERVAL"] = "1s"
    smtp_port, mailbox = smtp_server
    url, inbox = http_receiver
    routing = base / "routing.yaml"
    routing.write_text(ROUTING.format(smtp_port=smtp_port, url=url))
    env["SHAPING_ALERT_ROUTING"] = str(routing)
    bootstrap = f"127.0.0.1:{env['SHAPING_KAFKA_PORT']}"
    db_url = f"postgresql+psycopg://shaping_projector@127.0.0.1:{env['SHAPING_PG_PORT']}/shaping"
    prometheus = f"http://127.0.0.1:{env['SHAPING_PROMETHEUS_PORT']}"
    stack = Path(env["SHAPING_STACK_DIR"])
    secrets = stack / "kafka" / "secrets"
    operator_env = stack / "operator.env"
    try:
        out = run(["make", "-s", "stack-up"], env)
        assert f"Kafka {bootstrap} (SASL_SSL, ACLs)" in out and db_url in out
        assert f"SHAPING_CREDENTIALS_FILE='{operator_env}'" in out
        assert f"http://127.0.0.1:{env['SHAPING_WEB_PORT']}/" in out and "first login" in out
        run(["bash", str(STACK_SH), "status"], env)

        # Secured: nobody gets in without credentials; the operator's are in a 0600 file
        # (paths to the password files, which are 0600 too, never a password).
        _anonymous_clients_are_refused(bootstrap, secrets / "ca.crt")
        assert stat.S_IMODE(operator_env.stat().st_mode) == 0o600
        credentials = operator_env.read_text()
        assert "SHAPING_KAFKA_SASL_USERNAME='operator'" in credentials
        assert "SHAPING_KAFKA_SECURITY_PROTOCOL='SASL_SSL'" in credentials
        assert "shaping_reader@" in credentials and "SHAPING_DB_PASSWORD_FILE=" in credentials
        for name in ("operator.password",):
            assert (secrets / name).read_text().strip() not in credentials
        pg_secrets = stack / "postgres" / "secrets"
        assert (pg_secrets / "shaping_reader.password").read_text().strip() not in credentials
        for path in [*secrets.glob("*.password"), *pg_secrets.glob("*.password")]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        # Each service runs as its own principal and role, from the files, not the command line.
        services = [(name, name) for name in SERVICES]
        for service, principal in services:
            environ = Path(f"/proc/{read_pid(stack / f'{service}.pid')}/environ").read_bytes()
            assert f"SHAPING_KAFKA_SASL_USERNAME={principal}".encode() in environ.split(b"\0")
            assert b"SHAPING_KAFKA_SASL_PASSWORD=" not in environ
        projector_cmdline = Path(f"/proc/{read_pid(stack / 'projector.pid')}/cmdline").read_bytes()
        assert b"password" not in projector_cmdline.lower()

        # The lab's sessions reach the processor through the admin principal: the lab driver
        # plays every rig at once and enrols its mice through its rig transport, which no rig
        # principal may do (each real rig publishes as itself on its ingress topic, through the
        # gate: tests/integration/test_ingress_kafka.py).
        topics = TopicNames.with_prefix("shaping")  # the prefix of infra/shaping.env
        admin = KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="admin",
            sasl_password_file=secrets / "admin.password",
            ssl_cafile=secrets / "ca.crt",
        )
        transport = KafkaRigTransport(
            KafkaLink(bootstrap, admin),
            topics.events,
            topics.assignments,
            "stack-rigs",
            codec=default_codec(),
        )
        try:
            run_lab(PLAN, transport, wait_s=90)
        finally:
            transport.close()
        store = sql_store(_reader_url(stack, env["SHAPING_PG_PORT"]))
        try:
            wait_until(
                lambda: len(store.snapshot()["decision_log"]) == PLAN.n_mice * PLAN.n_days,
                90,
                "the stack's projector to record every decision",
            )
        finally:
            store.close()
        # The operator's read command finds its credentials through the settings.
        result = CliRunner().invoke(
            app, ["status"], env={"COLUMNS": "200", "SHAPING_CREDENTIALS_FILE": str(operator_env)}
        )
        assert result.exit_code == 0, result.output
        for mouse, rig in PLAN.mice():
            line = next(line for line in result.output.splitlines() if mouse in line)
            assert rig in line and "basic-shaping" in line
        wait_until(
            lambda: (
                prom_value(prometheus, "sum(shaping_mice_per_stage)") == PLAN.n_mice
                and prom_value(prometheus, "sum(shaping_decisions_total)")
                == PLAN.n_mice * PLAN.n_days
            ),
            60,
            "the stack's Prometheus to scrape the decisions",
        )
        # An operator's command goes to the operator's own ingress topic (the only one it may
        # write), the gate forwards it, and the processor honours it.
        ejected = PLAN.mice()[0][0]
        result = CliRunner().invoke(
            app,
            ["eject", ejected, "--reason", "end of the stack test", "--wait", "60"],
            env={"COLUMNS": "200", "SHAPING_CREDENTIALS_FILE": str(operator_env)},
        )
        assert result.exit_code == 0, result.output
        assert "honoured" in result.output and "shaping.operator.operator" in result.output, (
            result.output
        )
        _a_keepers_morning_on_the_page(stack, env, operator_env, PLAN.mice()[1][0])
        # The weight alert reaches the keeper by email and chat through the notifier (the
        # not-weighed alert may come and go before it, depending on the hour).
        weighed = PLAN.mice()[1][0]
        headline = f"CRITICAL weight: mouse {weighed}"
        wait_until(
            lambda: (
                any(headline in str(m["Subject"]) for m in mailbox.messages)
                and any(headline in json.dumps(p["json"]) for p in inbox.posts)
            ),
            90,
            "the keeper's email and chat message of the weight alert",
        )
        assert {m["To"] for m in mailbox.messages} == {"keeper@lab.test"}
        assert {p["path"] for p in inbox.posts} == {"/chat"}
        wait_until(
            lambda: (
                prom_value(prometheus, 'sum(shaping_web_actions_total{outcome="sent"})') == 1
                # None until Prometheus has scraped a sample of the metric
                and (
                    prom_value(prometheus, 'sum(shaping_alerts_events_total{event="raised"})') or 0
                )
                >= 1
                and (prom_value(prometheus, "sum(shaping_notifier_sent_total)") or 0) >= 2
            ),
            60,
            "the stack's Prometheus to scrape the page, the alerts service and the notifier",
        )
        pids = {
            "kafka": read_pid(stack / "kafka" / "kafka.pid"),
            "prometheus": read_pid(stack / "prometheus" / "prometheus.pid"),
            "postgres": read_pid(stack / "postgres" / "postmaster.pid"),
        }
        pids.update({name: read_pid(stack / f"{name}.pid") for name in SERVICES})
        assert all(_alive(pid) for pid in pids.values()), pids
    finally:
        run(["make", "-s", "stack-down"], env)
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not [port for port in ports if port_open(port)]
    assert not list(stack.glob("*.pid")) and not (stack / "kafka" / "kafka.pid").exists()
    assert not (stack / "prometheus" / "prometheus.pid").exists()
    remove_dir(base)


def _a_keepers_morning_on_the_page(
    stack: Path, env: dict[str, str], operator_env: Path, mouse: str
) -> None:
    """The operator restricts ``mouse``; the stack's first manager logs in to the page and
    weighs it below its minimum: a command sent as web/manager through the gate, honoured
    by the processor, recorded in the tables and held."""
    result = CliRunner().invoke(
        app,
        ["restrict", "start", mouse, "--reference", "25", "--wait", "60"],
        env={"COLUMNS": "200", "SHAPING_CREDENTIALS_FILE": str(operator_env)},
    )
    assert result.exit_code == 0, result.output
    password_file = stack / "web" / "manager.initial-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((stack / "web" / "users.json").stat().st_mode) == 0o600
    web = f"http://127.0.0.1:{env['SHAPING_WEB_PORT']}"
    with httpx.Client(base_url=web, timeout=90) as page:
        login = csrf_of(page.get("/login").text)
        password = password_file.read_text().strip()
        answer = page.post("/login", data={"name": "manager", "password": password, "csrf": login})
        assert answer.status_code == 303, answer.text
        token = csrf_of(page.get(f"/mice/{mouse}").text)
        answer = page.post(
            f"/mice/{mouse}/weigh",
            data={"grams": "19", "confirm": "yes", "csrf": token},
            follow_redirects=True,
        )
        assert answer.status_code == 200 and "19" in answer.text, answer.text
    store = sql_store(_reader_url(stack, env["SHAPING_PG_PORT"]))
    try:
        wait_until(
            lambda: any(
                row["mouse_id"] == mouse and row["held"] for row in store.snapshot()["welfare_gate"]
            ),
            60,
            "the weighed mouse held in the tables",
        )
        [weighed] = [r for r in store.snapshot()["husbandry_weights"] if r["mouse_id"] == mouse]
        assert (weighed["grams"], weighed["recorded_by"]) == (19.0, "web/manager")
    finally:
        store.close()


def _stack_env(base: Path) -> tuple[dict[str, str], list[int]]:
    """The environment of a stack on free ports with its data under ``base``."""
    names = ["KAFKA", "KAFKA_CONTROLLER", "PG", "PROMETHEUS", "PROCESSOR_METRICS"]
    names += ["PROJECTOR_METRICS", "INGRESS_METRICS", "GRAFANA", "ALERTS_METRICS"]
    names += ["NOTIFIER_METRICS", "WEB_METRICS", "WEB"]
    ports = free_ports(len(names))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    env.update({f"SHAPING_{name}_PORT": str(port) for name, port in zip(names, ports, strict=True)})
    env["SHAPING_STACK_DIR"] = str(base / "stack")
    env["SHAPING_OWNER_PID"] = str(os.getpid())  # safety net if this test dies
    return env, ports


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``make stack-<command>`` (``stack.sh check`` has no make target)."""
    args = (
        ["bash", str(STACK_SH), "check"]
        if command == "check"
        else ["make", "-s", f"stack-{command}"]
    )
    return subprocess.run(
        args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )


def _nothing_runs(stack: Path, ports: list[int], but: frozenset[int] = frozenset()) -> None:
    pid_files = [
        stack / "kafka" / "kafka.pid",
        *(stack / f"{name}.pid" for name in SERVICES),
        stack / "prometheus" / "prometheus.pid",
        stack / "postgres" / "postmaster.pid",
    ]
    alive = {str(path): read_pid(path) for path in pid_files if _alive(read_pid(path))}
    assert not alive, f"left running: {alive}"
    assert not [port for port in ports if port not in but and port_open(port)]


def test_stack_up_in_a_directory_postgres_cannot_reach_starts_nothing_and_says_how_to_fix() -> None:
    """As root the server runs as the postgres user, which cannot traverse a 0700 directory
    (what mkdtemp makes). `up` used to start Kafka, then fail at PostgreSQL and leave Kafka
    running; now it checks first and says what to change."""
    base = Path(tempfile.mkdtemp(prefix="shaping-test-0700-"))  # mode 0700
    env, ports = _stack_env(base)
    stack = base / "stack"
    try:
        check = _stack("check", env)
        if os.geteuid() != 0:
            # Not root: the server runs as us, who can reach our own directory.
            assert check.returncode == 0, check.stdout + check.stderr
            return
        assert check.returncode != 0
        result = _stack("up", env)
        assert result.returncode != 0
        for output in (check.stderr, result.stderr):
            assert "user 'postgres' cannot reach" in output, output
            assert str(base) in output, output
            assert "SHAPING_STACK_DIR=" in output and f"chmod o+x {base}" in output, output
        assert "kafka: starting" not in result.stdout + result.stderr
        _nothing_runs(stack, ports)
        assert not (stack / "kafka").exists() and not (stack / "postgres").exists()
    finally:
        _stack("down", env)
        remove_dir(base)
    _nothing_runs(stack, ports)


def test_stack_up_stops_what_it_started_when_a_later_part_fails(
    prometheus_installed: None,
) -> None:
    """The last part (Prometheus) cannot start: its port is taken by a stranger. Kafka,
    PostgreSQL, the ingress gate, the processor, the projector, the alerts service and the web
    page, started by this `up`, are stopped again (no routing file: no notifier)."""
    base = make_temp_dir("shaping-test-stack-rollback-")
    env, ports = _stack_env(base)
    stack = base / "stack"
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    prometheus_port = int(env["SHAPING_PROMETHEUS_PORT"])
    stranger.bind(("127.0.0.1", prometheus_port))
    stranger.listen()
    try:
        result = _stack("up", env)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert f"port 127.0.0.1:{prometheus_port} is already in use" in output, output
        assert "projector up" in output and "processor up" in output, output
        assert "ingress up" in output, output
        started = "kafka postgres ingress processor projector alerts web"
        assert f"stopping what it started: {started}" in output, output
        _nothing_runs(stack, ports, but=frozenset({prometheus_port}))
    finally:
        stranger.close()
        _stack("down", env)
    _nothing_runs(stack, ports)
    remove_dir(base)
