"""Prometheus metrics on the real stack: a real Prometheus (Debian's package, started by
infra/prometheus/prometheus.sh on a free loopback port) scrapes the processor and the projector,
run as separate processes, while simulated rigs train mice over Kafka, and two rigs' outbox
exporters (found through the ``rigs`` job's file_sd file, as in docker-compose). Then: the
values in Prometheus agree with the status tables and the rigs' outboxes, promtool accepts every
/metrics output, and every dashboard query runs in Prometheus on metric names really exported."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.link.store import RigStore
from shaping.rig.metrics import OutboxDepthExporter
from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.metrics import RIG_OUTBOX_DEPTH
from shaping.services.adapters.topics import ensure_topics
from shaping.services.projector.store import SqlProjectionStore
from tests.support.kafka_io import Publisher
from tests.support.ops import (
    PROMETHEUS_SH,
    PROMETHEUS_SYNTHETIC,
    dashboard_promql,
    free_ports,
    prom_query,
    prom_value,
    promql_metric_names,
    promtool_check_metrics,
    run,
    scrape,
    scraped_names,
)
from tests.support.processes import shaping_process, wait_until
from tests.support.story import enrolled, session, trials
from tests.support.wiring import sql_store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e]

PLAN = LabPlan(n_mice=3, n_rigs=3, n_days=3, seed=11)
SESSIONS = PLAN.n_mice * PLAN.n_days
OUTBOXES = {"rig-a": 5, "rig-b": 0}
"""Events waiting in each exporting rig's outbox (Kafka never acknowledged them)."""


@dataclass
class Observed:
    prometheus: str
    scrapes: dict[str, str]
    tables: dict[str, list[dict[str, object]]]


def rig_exporters(folder: Path) -> tuple[list[OutboxDepthExporter], Path]:
    """An outbox exporter per rig of OUTBOXES, each rig's store holding that many unsent
    events, and the file_sd file that lists them for Prometheus' ``rigs`` job."""
    events = [enrolled("R1"), *session("R1", "R1-s1", trials(correct=2))]
    exporters, targets = [], []
    for rig, unsent in OUTBOXES.items():
        store = RigStore(folder / rig / "rig.sqlite", codec=default_codec())
        try:
            for event in events[:unsent]:
                store.append(event, "shaping.events")
        finally:
            store.close()
        exporter = OutboxDepthExporter(store.path, rig, 0, "127.0.0.1").start()
        exporters.append(exporter)
        targets.append(f"'127.0.0.1:{exporter.port}'")
    sd_file = folder / "rigs.yml"
    sd_file.write_text(f"- targets: [{', '.join(targets)}]\n")
    return exporters, sd_file


def tables_settled(store: SqlProjectionStore) -> dict[str, list[dict[str, object]]] | None:
    """The status tables once every decision, the rejection and every mouse's assignment for
    its next session are projected (assignments and decisions come on different topics)."""
    tables = store.snapshot()
    status = tables["mouse_status"]
    if (
        len(tables["decision_log"]) == SESSIONS
        and len(tables["rejected_events"]) == 1
        and len(status) == PLAN.n_mice
        and all(row["next_session_number"] == PLAN.n_days + 1 for row in status)
    ):
        return tables
    return None


@pytest.fixture(scope="module")
def observed(
    kafka_bootstrap: str,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    prometheus_installed: None,
) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("metrics")
    topics = TopicNames.with_prefix(f"m{uuid4().hex[:6]}")
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    store = sql_store(postgres_url)
    store.reset()
    store.close()
    prom_port, processor_port, projector_port = free_ports(3)
    exporters, sd_file = rig_exporters(tmp / "rigs")
    prom_env = {
        **os.environ,
        "SHAPING_PROMETHEUS_PORT": str(prom_port),
        "SHAPING_PROMETHEUS_DATA": str(tmp / "prometheus"),
        "SHAPING_PROMETHEUS_SCRAPE_INTERVAL": "1s",
        "SHAPING_PROMETHEUS_TARGETS": (
            f"processor=127.0.0.1:{processor_port},projector=127.0.0.1:{projector_port}"
        ),
        "SHAPING_PROMETHEUS_RIG_FILES": str(sd_file),
        "SHAPING_OWNER_PID": str(os.getpid()),
    }
    base = f"http://127.0.0.1:{prom_port}"
    common = ["--bootstrap", kafka_bootstrap, "--prefix", topics.events.rsplit(".", 1)[0]]
    common += ["--metrics-host", "127.0.0.1"]
    env = {"SHAPING_PROCESSOR_ID": f"proc-{uuid4().hex[:6]}", "SHAPING_DATA_DIR": str(tmp)}
    run(["bash", str(PROMETHEUS_SH), "up"], prom_env)
    try:
        with (
            shaping_process(
                ["processor", *common, "--metrics-port", str(processor_port)],
                tmp / "processor.log",
                env,
            ) as processor,
            shaping_process(
                [
                    "projector",
                    *common,
                    "--db-url",
                    postgres_url,
                    "--metrics-port",
                    str(projector_port),
                ],
                tmp / "projector.log",
                env,
            ) as projector,
        ):
            with Publisher(kafka_bootstrap, topics.events) as publisher:
                publisher.raw(b"M001", b"\x00 not a Shaping event")
            transport = KafkaRigTransport(
                kafka_bootstrap,
                topics.events,
                topics.assignments,
                client_id="metrics-rigs",
                codec=default_codec(),
            )
            try:
                run_lab(PLAN, transport, wait_s=90)
            finally:
                transport.close()
            store = sql_store(postgres_url)
            try:
                tables = wait_until(
                    lambda: tables_settled(store),
                    90,
                    "the projector to record every decision, assignment and the rejection",
                )
            finally:
                store.close()
            settled_at = time.time()
            # The mice-per-stage gauge is computed from the tables when Prometheus scrapes: a
            # scrape that started after the tables settled holds their final counts. (Waiting
            # for the right sums alone is not enough: every mouse is counted on some stage
            # before its last assignment is projected.)
            wait_until(
                lambda: (prom_value(base, 'timestamp(up{job="projector"})') or 0) > settled_at,
                60,
                "a scrape of the projector after the tables settled",
            )
            wait_until(
                lambda: (
                    prom_value(base, "sum(shaping_decisions_total)") == SESSIONS
                    and prom_value(base, "sum(shaping_mice_per_stage)") == PLAN.n_mice
                    and len(prom_query(base, "shaping_rig_outbox_depth")) == len(OUTBOXES)
                ),
                60,
                "Prometheus to scrape the final counts and every rig",
            )
            # rate() and increase() need two samples of a series; the last ones appeared late.
            wait_until(
                lambda: all(
                    (prom_value(base, f"min(count_over_time({name}[1h]))") or 0) >= 2
                    for name in ("shaping_decisions_total", "shaping_events_rejected_total")
                ),
                30,
                "two samples of every counter",
            )
            scrapes = {
                "processor": scrape(processor_port),
                "projector": scrape(projector_port),
                "rig": scrape(exporters[0].port),
            }
            assert processor.poll() is None, (tmp / "processor.log").read_text()[-3000:]
            assert projector.poll() is None, (tmp / "projector.log").read_text()[-3000:]
            yield Observed(base, scrapes, tables)
    finally:
        run(["bash", str(PROMETHEUS_SH), "down"], prom_env)
        for exporter in exporters:
            exporter.stop()


def test_prometheus_holds_nonzero_values_for_every_service_metric(observed: Observed) -> None:
    base = observed.prometheus
    for expr in (
        'sum(shaping_events_consumed_total{service="processor"})',
        'sum(shaping_events_consumed_total{service="projector"})',
        "sum(shaping_events_produced_total)",
        "sum(shaping_events_rejected_total)",
        "sum(shaping_decisions_total)",
        "sum(shaping_mice_per_stage)",
        'sum(shaping_processing_seconds_count{service="processor", unit="message"})',
        'sum(shaping_processing_seconds_count{service="projector", unit="batch"})',
        "sum(shaping_event_age_seconds_count)",
        "sum(faust_messages_received_total)",
        "sum(faust_producer_send_latency_seconds_count)",
    ):
        value = prom_value(base, expr)
        assert value is not None and value > 0, expr
    lag = prom_query(base, "shaping_consumer_lag")
    assert {series["metric"]["service"] for series in lag} == {"processor", "projector"}


def test_prometheus_values_agree_with_the_status_tables(observed: Observed) -> None:
    base = observed.prometheus
    tables = observed.tables
    by_decision = {
        series["metric"]["decision"]: float(series["value"][1])
        for series in prom_query(base, "sum by (decision) (shaping_decisions_total)")
    }
    expected: dict[str, float] = {}
    for row in tables["decision_log"]:
        expected[str(row["decision"])] = expected.get(str(row["decision"]), 0) + 1
    assert by_decision == expected
    per_stage = {
        series["metric"]["stage"]: float(series["value"][1])
        for series in prom_query(base, "sum by (stage) (shaping_mice_per_stage)")
    }
    stages: dict[str, float] = {}
    for row in tables["mouse_status"]:
        stages[str(row["stage"])] = stages.get(str(row["stage"]), 0) + 1
    assert per_stage == stages
    [rejected] = prom_query(base, "shaping_events_rejected_total")
    assert rejected["metric"]["error_kind"] == tables["rejected_events"][0]["error_kind"]
    ended = prom_value(
        base, 'sum(shaping_events_consumed_total{service="processor", event_type="SessionEnded"})'
    )
    assert ended == SESSIONS


@pytest.mark.parametrize("service", ["processor", "projector", "rig"])
def test_promtool_accepts_every_metrics_output(observed: Observed, service: str) -> None:
    result = promtool_check_metrics(observed.scrapes[service])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_reads_exported_metrics_and_runs(observed: Observed) -> None:
    exported = set().union(*(scraped_names(text) for text in observed.scrapes.values()))
    assert RIG_OUTBOX_DEPTH in exported
    allowed = exported | PROMETHEUS_SYNTHETIC
    expressions = dashboard_promql()
    assert len(expressions) >= 10
    for expr in expressions:
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= allowed, f"{expr!r} reads {sorted(names - allowed)}, not exported"
        result = prom_query(observed.prometheus, expr)  # raises on a PromQL error
        assert result, f"{expr!r} returned no data"


def test_prometheus_sees_both_services_and_every_rig_up(observed: Observed) -> None:
    up = prom_query(observed.prometheus, "up")
    jobs = sorted((s["metric"]["job"], s["value"][1]) for s in up)
    assert jobs == [("processor", "1"), ("projector", "1")] + [("rigs", "1")] * len(OUTBOXES)


def test_prometheus_scrapes_the_outbox_depth_of_every_rig(observed: Observed) -> None:
    depth = {
        series["metric"]["rig"]: float(series["value"][1])
        for series in prom_query(observed.prometheus, 'shaping_rig_outbox_depth{job="rigs"}')
    }
    assert depth == OUTBOXES
