"""Generates Shaping's Grafana dashboards (infra/grafana/dashboards/*.json) from code.

    .venv/bin/python infra/grafana/dashboards.py          # rewrite the JSON files
    .venv/bin/python infra/grafana/dashboards.py --check  # exit 1 if they are out of date

Three dashboards, provisioned into Grafana by docker-compose (see provisioning/):

- lab overview: mice per stage, sessions today, decisions, rejected events, the status table;
- mouse drill-down: one mouse's stage timeline, accuracy per session, trials and decisions;
- pipeline health: consumer lag, processing latency, event age, throughput, rig outbox depth,
  faust's own sensors.

PromQL panels use the metric names of ``services/adapters/metrics.py``; SQL panels query the
projector's tables (``services/projector/tables.py``) through the Postgres datasource. The
tests in tests/ops check both against what the services really export and really create.
Standard library only, so the script runs anywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"

PROMETHEUS = {"type": "prometheus", "uid": "shaping-prometheus"}
POSTGRES = {"type": "grafana-postgresql-datasource", "uid": "shaping-postgres"}

Panel = dict[str, Any]


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, panel: Panel, w: int, h: int) -> Panel:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_height = max(self.row_height, h)
        return panel


def prom(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    """A PromQL target."""
    return {
        "refId": ref,
        "datasource": PROMETHEUS,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


def sql(query: str, fmt: str = "table", ref: str = "A") -> dict[str, Any]:
    """A SQL target on the status tables."""
    return {
        "refId": ref,
        "datasource": POSTGRES,
        "rawSql": " ".join(query.split()),
        "format": fmt,
        "rawQuery": True,
        "editorMode": "code",
    }


def panel(kind: str, title: str, targets: list[dict[str, Any]], **extra: Any) -> Panel:
    datasource = targets[0]["datasource"]
    result: Panel = {
        "type": kind,
        "title": title,
        "datasource": datasource,
        "targets": targets,
        "options": {},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }
    result.update(extra)
    return result


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    time_from: str = "now-24h",
    variables: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["shaping"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables or []},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["shaping"], "title": "Shaping", "asDropdown": True}
        ],
        "panels": panels,
    }


def lab_overview() -> dict[str, Any]:
    grid = Layout()
    panels = [
        grid.place(
            panel(
                "bargauge",
                "Mice per stage",
                [prom("sum by (stage) (shaping_mice_per_stage)", "{{stage}}", instant=True)],
                options={"orientation": "horizontal", "displayMode": "gradient"},
            ),
            8,
            8,
        ),
        grid.place(
            panel(
                "stat",
                "Sessions today (UTC)",
                [
                    sql(
                        """SELECT count(*) AS sessions FROM session_summaries
                        WHERE started_at >= date_trunc('day', now() AT TIME ZONE 'UTC')
                        AT TIME ZONE 'UTC'"""
                    )
                ],
            ),
            4,
            8,
        ),
        grid.place(
            panel(
                "stat",
                "Mice in training",
                [prom("sum(shaping_mice_per_stage)", "mice", instant=True)],
            ),
            4,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Sessions per hour",
                [
                    sql(
                        """SELECT $__timeGroupAlias(started_at, '1h'), count(*) AS sessions
                        FROM session_summaries WHERE $__timeFilter(started_at)
                        GROUP BY 1 ORDER BY 1""",
                        fmt="time_series",
                    )
                ],
            ),
            8,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Decisions per hour",
                [prom("sum by (decision) (increase(shaping_decisions_total[1h]))", "{{decision}}")],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "table",
                "Decisions by curriculum and stage (since the processor started)",
                [
                    prom(
                        "sum by (curriculum, stage, decision) (shaping_decisions_total)",
                        instant=True,
                    )
                ],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Rejected events per hour, by reason",
                [
                    prom(
                        "sum by (error_kind) (increase(shaping_events_rejected_total[1h]))",
                        "{{error_kind}}",
                    )
                ],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "table",
                "Latest rejected events",
                [
                    sql(
                        """SELECT occurred_at AS "time", mouse_id, error_kind, reason,
                        source_topic, source_partition, source_offset FROM rejected_events
                        ORDER BY occurred_at DESC LIMIT 50"""
                    )
                ],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "table",
                "Status of every mouse",
                [
                    sql(
                        """SELECT mouse_id, curriculum_name, curriculum_version, stage,
                        sessions_at_stage, sessions_completed, last_decision, last_decision_at,
                        assigned_at FROM mouse_status ORDER BY mouse_id"""
                    )
                ],
            ),
            24,
            10,
        ),
    ]
    return dashboard(
        "shaping-lab-overview",
        "Shaping: lab overview",
        "Where every mouse stands, how many sessions ran today, what was decided, what was"
        " rejected.",
        panels,
    )


def mouse_drilldown() -> dict[str, Any]:
    grid = Layout()
    mouse = "'${mouse}'"
    panels = [
        grid.place(
            panel(
                "state-timeline",
                "Stage timeline",
                [
                    sql(
                        f"""SELECT occurred_at AS "time", stage FROM stage_history
                        WHERE mouse_id = {mouse} ORDER BY occurred_at"""
                    )
                ],
                options={"mergeValues": True, "showValue": "auto"},
            ),
            24,
            6,
        ),
        grid.place(
            panel(
                "timeseries",
                "Accuracy per session",
                [
                    sql(
                        f"""SELECT started_at AS "time", accuracy FROM session_summaries
                        WHERE mouse_id = {mouse} AND accuracy IS NOT NULL ORDER BY started_at""",
                        fmt="time_series",
                    )
                ],
                fieldConfig={
                    "defaults": {"min": 0, "max": 1, "unit": "percentunit"},
                    "overrides": [],
                },
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "barchart",
                "Trials per session",
                [
                    sql(
                        f"""SELECT started_at AS "time", n_correct, n_incorrect, n_miss
                        FROM session_summaries WHERE mouse_id = {mouse} AND n_trials IS NOT NULL
                        ORDER BY started_at"""
                    )
                ],
                options={"stacking": "normal"},
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "table",
                "Current status",
                [
                    sql(
                        f"""SELECT mouse_id, curriculum_name, curriculum_version, stage,
                        sessions_at_stage, sessions_completed, next_session_number,
                        last_decision, last_reason, enrolled_at, enrolled_by FROM mouse_status
                        WHERE mouse_id = {mouse}"""
                    )
                ],
            ),
            24,
            5,
        ),
        grid.place(
            panel(
                "table",
                "Decisions and evidence",
                [
                    sql(
                        f"""SELECT occurred_at AS "time", session_total, from_stage, to_stage,
                        decision, rule, evidence_json FROM decision_log
                        WHERE mouse_id = {mouse} ORDER BY occurred_at DESC"""
                    )
                ],
            ),
            24,
            10,
        ),
    ]
    variables = [
        {
            "name": "mouse",
            "label": "Mouse",
            "type": "query",
            "datasource": POSTGRES,
            "query": "SELECT mouse_id FROM mouse_status ORDER BY mouse_id",
            "definition": "SELECT mouse_id FROM mouse_status ORDER BY mouse_id",
            "refresh": 1,
            "multi": False,
            "includeAll": False,
        }
    ]
    return dashboard(
        "shaping-mouse",
        "Shaping: mouse drill-down",
        "One mouse: the stages it went through, its accuracy and trials per session, and every"
        " decision with its evidence.",
        panels,
        time_from="now-90d",
        variables=variables,
    )


def pipeline_health() -> dict[str, Any]:
    grid = Layout()
    panels = [
        grid.place(
            panel(
                "stat",
                "Services up",
                [prom('up{job=~"processor|projector"}', "{{job}}", instant=True)],
            ),
            6,
            6,
        ),
        grid.place(
            panel(
                "timeseries",
                "Consumer lag (messages)",
                [prom("sum by (service, topic) (shaping_consumer_lag)", "{{service}} {{topic}}")],
            ),
            18,
            6,
        ),
        grid.place(
            panel(
                "timeseries",
                "Processing time, 95th percentile",
                [
                    prom(
                        "histogram_quantile(0.95, sum by (le, service, unit)"
                        " (rate(shaping_processing_seconds_bucket[5m])))",
                        "{{service}} per {{unit}}",
                    )
                ],
                fieldConfig={"defaults": {"unit": "s"}, "overrides": []},
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Event age when processed, 95th percentile",
                [
                    prom(
                        "histogram_quantile(0.95, sum by (le, service)"
                        " (rate(shaping_event_age_seconds_bucket[5m])))",
                        "{{service}}",
                    )
                ],
                fieldConfig={"defaults": {"unit": "s"}, "overrides": []},
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Events consumed per second",
                [
                    prom(
                        "sum by (service, event_type) (rate(shaping_events_consumed_total[5m]))",
                        "{{service}} {{event_type}}",
                    )
                ],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Events produced per second",
                [
                    prom(
                        "sum by (topic, event_type) (rate(shaping_events_produced_total[5m]))",
                        "{{topic}} {{event_type}}",
                    )
                ],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Rig outbox depth (events not yet acknowledged by Kafka)",
                [prom("max by (rig) (shaping_rig_outbox_depth)", "{{rig}}")],
            ),
            12,
            8,
        ),
        grid.place(
            panel(
                "timeseries",
                "Faust: messages received per second and producer send latency (95th percentile)",
                [
                    prom("rate(faust_messages_received_total[5m])", "messages/s"),
                    prom(
                        "histogram_quantile(0.95,"
                        " rate(faust_producer_send_latency_seconds_bucket[5m]))",
                        "send latency p95 (s)",
                        ref="B",
                    ),
                ],
            ),
            12,
            8,
        ),
    ]
    return dashboard(
        "shaping-pipeline",
        "Shaping: pipeline health",
        "Are the services up and keeping up: lag, latency, throughput, rig outboxes.",
        panels,
        time_from="now-1h",
    )


DASHBOARDS = {
    "lab-overview.json": lab_overview,
    "mouse-drilldown.json": mouse_drilldown,
    "pipeline-health.json": pipeline_health,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        stale = [
            n
            for n, text in rendered.items()
            if not (OUT / n).is_file() or (OUT / n).read_text() != text
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
