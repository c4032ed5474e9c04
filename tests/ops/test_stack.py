"""`make stack-up` / `make stack-down`: the whole stack as local processes (Kafka, PostgreSQL,
topics, processor, projector, Prometheus), started by infra/stack.sh on non-default ports set
through the environment, used by simulated rigs, and stopped without leaving anything behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rig.kafka_transport import KafkaRigTransport
from rig.lab import LabPlan, run_lab
from services.cli import app
from services.common.topics import TopicNames
from services.projector.store import SqlProjectionStore
from tests.ops.helpers import STACK_SH, free_ports, port_open, prom_value, read_pid, run
from tests.support.processes import wait_until
from tests.support.scripts import make_temp_dir, remove_dir

pytestmark = [pytest.mark.e2e]

PLAN = LabPlan(n_mice=2, n_rigs=2, n_days=2, seed=9)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_up_runs_the_lab_and_stack_down_leaves_nothing() -> None:
    # Not pytest's tmp_path: PostgreSQL runs as the postgres user and must reach its data.
    base = make_temp_dir("shaping-test-stack-")
    ports = free_ports(7)
    names = ["KAFKA", "KAFKA_CONTROLLER", "PG", "PROMETHEUS", "PROCESSOR_METRICS"]
    names += ["PROJECTOR_METRICS", "GRAFANA"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    env.update({f"SHAPING_{name}_PORT": str(port) for name, port in zip(names, ports, strict=True)})
    env["SHAPING_STACK_DIR"] = str(base / "stack")
    env["SHAPING_PROMETHEUS_SCRAPE_INTERVAL"] = "1s"
    env["SHAPING_OWNER_PID"] = str(os.getpid())  # safety net if this test dies
    bootstrap = f"127.0.0.1:{env['SHAPING_KAFKA_PORT']}"
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:{env['SHAPING_PG_PORT']}/shaping"
    prometheus = f"http://127.0.0.1:{env['SHAPING_PROMETHEUS_PORT']}"
    stack = Path(env["SHAPING_STACK_DIR"])
    try:
        out = run(["make", "-s", "stack-up"], env)
        assert f"Kafka {bootstrap}" in out and db_url in out
        run(["bash", str(STACK_SH), "status"], env)

        topics = TopicNames.with_prefix("shaping")  # the prefix of infra/shaping.env
        transport = KafkaRigTransport(bootstrap, topics.events, topics.assignments, "stack-rigs")
        try:
            run_lab(PLAN, transport, wait_s=90)
        finally:
            transport.close()
        store = SqlProjectionStore(db_url)
        try:
            wait_until(
                lambda: len(store.snapshot()["decision_log"]) == PLAN.n_mice * PLAN.n_days,
                90,
                "the stack's projector to record every decision",
            )
        finally:
            store.close()
        result = CliRunner().invoke(app, ["status", "--db-url", db_url], env={"COLUMNS": "200"})
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
        pids = {
            "kafka": read_pid(stack / "kafka" / "kafka.pid"),
            "processor": read_pid(stack / "processor.pid"),
            "projector": read_pid(stack / "projector.pid"),
            "prometheus": read_pid(stack / "prometheus" / "prometheus.pid"),
            "postgres": read_pid(stack / "postgres" / "postmaster.pid"),
        }
        assert all(_alive(pid) for pid in pids.values()), pids
    finally:
        run(["make", "-s", "stack-down"], env)
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not [port for port in ports if port_open(port)]
    assert not list(stack.glob("*.pid")) and not (stack / "kafka" / "kafka.pid").exists()
    assert not (stack / "prometheus" / "prometheus.pid").exists()
    remove_dir(base)
