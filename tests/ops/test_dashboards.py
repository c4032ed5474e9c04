"""The Grafana dashboards: generated from code, wired to the provisioned datasources, PromQL on
Shaping's documented metric names, and SQL that runs on the projector's real tables in a real
PostgreSQL. (tests/ops/test_metrics_e2e.py runs every PromQL query in a real Prometheus.)"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from uuid import uuid4

import faust
import pytest
import yaml
from sqlalchemy import create_engine, make_url, text

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.services.adapters.metrics import CATALOGUE, ServiceMetrics, attach_faust_sensors
from tests.support.ops import (
    GRAFANA,
    PROMETHEUS_SYNTHETIC,
    dashboard_promql,
    dashboard_sql,
    dashboards,
    expand_grafana_sql,
    promql_metric_names,
    targets,
)
from tests.support.scripts import REPO
from tests.support.wiring import embedded_runtime, sql_store


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboards_are_what_the_generator_writes() -> None:
    rendered = _generator().render()
    assert set(rendered) == {"lab-overview.json", "mouse-drilldown.json", "pipeline-health.json"}
    for name, text_ in rendered.items():
        assert (GRAFANA / "dashboards" / name).read_text() == text_, (
            f"{name} is stale: run `make dashboards`"
        )


def test_panels_use_only_provisioned_datasources_and_unique_ids() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/shaping.yml").read_text())
    uids = {(ds["type"], ds["uid"]) for ds in provisioned["datasources"]}
    assert {ds_type for ds_type, _ in uids} == {"prometheus", "grafana-postgresql-datasource"}
    seen_uids = set()
    for name, board in dashboards().items():
        assert board["uid"] not in seen_uids
        seen_uids.add(board["uid"])
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                ds = target["datasource"]
                assert (ds["type"], ds["uid"]) in uids, (name, panel["title"])


def test_the_dashboards_cover_the_views_the_lab_needs() -> None:
    titles = {name: [p["title"] for p in board["panels"]] for name, board in dashboards().items()}
    overview = " ".join(titles["lab-overview.json"]).lower()
    for word in ("mice per stage", "sessions today", "decisions", "rejected"):
        assert word in overview
    drilldown = " ".join(titles["mouse-drilldown.json"]).lower()
    assert "stage timeline" in drilldown and "accuracy" in drilldown
    health = " ".join(titles["pipeline-health.json"]).lower()
    for word in ("lag", "processing time", "outbox"):
        assert word in health


def _defined_names() -> set[str]:
    """Every series name the services can export, from the catalogue and a live registry."""
    names = {series for doc in CATALOGUE for series in doc.series()}
    metrics = ServiceMetrics("processor")
    attach_faust_sensors(
        faust.App("dashboards-test", broker="kafka://127.0.0.1:1"), metrics.registry
    )
    for family in metrics.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def test_every_promql_panel_reads_defined_metric_names() -> None:
    defined = _defined_names() | PROMETHEUS_SYNTHETIC
    for expr in dashboard_promql():
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= defined, f"{expr!r}: {sorted(names - defined)} is not a Shaping metric"


def test_promql_names_are_parsed_out_of_functions_labels_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, service) (rate(shaping_x_bucket{job=~"a|b",'
        ' le!="1"}[5m]))) / on(service) group_left sum without (topic) (up offset 1h)'
    )
    assert promql_metric_names(expr) == {"shaping_x_bucket", "up"}
    assert promql_metric_names("max by (rig) (shaping_rig_outbox_depth)") == {
        "shaping_rig_outbox_depth"
    }


@pytest.fixture(scope="module")
def lab_postgres(postgres_url: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL, with the projector's tables and a lab."""
    database = f"dash_{uuid4().hex[:8]}"
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    url = make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
    store = sql_store(url)
    runtime = embedded_runtime(store)
    run_lab(LabPlan(n_mice=2, n_rigs=1, n_days=3, seed=3), runtime)
    runtime.publish_raw(b"M001", b"garbage")
    store.close()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {database} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.postgres
def test_every_sql_panel_runs_on_the_projector_tables(lab_postgres: str) -> None:
    engine = create_engine(lab_postgres)
    queries = dashboard_sql()
    assert len(queries) >= 8
    try:
        with engine.connect() as conn:
            for query in queries:
                rows = conn.execute(text(expand_grafana_sql(query, mouse="M001"))).all()
                if "date_trunc('day', now()" not in query:  # the lab ran on other days
                    assert rows, f"no rows from {query!r}"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_time_series_sql_panels_return_a_time_column(lab_postgres: str) -> None:
    engine = create_engine(lab_postgres)
    try:
        with engine.connect() as conn:
            for _, title, target in targets("postgres"):
                if target["format"] == "time_series":
                    result = conn.execute(text(expand_grafana_sql(target["rawSql"])))
                    assert "time" in list(result.keys()), title
    finally:
        engine.dispose()


def test_the_readme_documents_every_metric() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Metrics") : readme.index("### Dashboards")]
    documented = re.findall(r"^\| `(\w+)` \| (\w+) \|", section, flags=re.MULTILINE)
    assert documented == [(doc.name, doc.kind) for doc in CATALOGUE]
