"""The rig's Prometheus metrics, served without prometheus-client (the rig stays light).

Every value is read from the rig's store at scrape time, so any process may serve them and a
restart loses nothing (the counters are counts of rows the store keeps):

``shaping_rig_outbox_depth{rig}`` (gauge)
    events in the rig's durable outbox that Kafka has not acknowledged yet; the name is in the
    services' catalogue (``shaping.services.adapters.metrics.RIG_OUTBOX_DEPTH``) and on the pipeline
    dashboard.
``shaping_rig_stale_assignments_total{rig, action}`` (counter)
    session starts where the rig knew its assignment was stale (the decision on the previous
    session had not arrived in time, or the newest assignment was unreadable), by what it did:
    ``ran_cached`` or ``refused`` (``stale_assignment.policy`` in the rig's config).
``shaping_rig_unsafe_assignments_total{rig, action}`` (counter)
    assignments outside the rig's safety limits (``[safety]`` in its config) that a session was
    about to run, by what the rig did: ``refused`` (nothing ran) or ``ran_last_safe`` (the
    newest assignment of the mouse within the limits ran instead).
``shaping_rig_held_refusals_total{rig}`` (counter)
    sessions the rig refused at the welfare gate: the mouse was held (below its minimum
    weight) or under water restriction and not cleared for the rig's day (not weighed).
``shaping_rig_undecodable_assignments_total{rig}`` (counter)
    records of the rig's mice on the assignments topic that this rig cannot decode (written
    by a newer release: upgrade the rig).
``shaping_rig_undecodable_decisions_total{rig}`` (counter)
    the same on the decisions topic.
``shaping_rig_clock_skew_seconds{rig}`` (gauge)
    the rig's clock minus the broker's (smoothed; positive: the rig runs ahead), measured on
    every acknowledged send to a topic with ``LogAppendTime``; absent until measured.

``shaping rig run --metrics-port N`` serves them on ``/metrics`` while the agent runs.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OUTBOX_DEPTH = "shaping_rig_outbox_depth"
STALE_ASSIGNMENTS = "shaping_rig_stale_assignments_total"
UNSAFE_ASSIGNMENTS = "shaping_rig_unsafe_assignments_total"
HELD_REFUSALS = "shaping_rig_held_refusals_total"
UNDECODABLE_ASSIGNMENTS = "shaping_rig_undecodable_assignments_total"
UNDECODABLE_DECISIONS = "shaping_rig_undecodable_decisions_total"
CLOCK_SKEW = "shaping_rig_clock_skew_seconds"

RIG_METRICS = (
    OUTBOX_DEPTH,
    STALE_ASSIGNMENTS,
    UNSAFE_ASSIGNMENTS,
    HELD_REFUSALS,
    UNDECODABLE_ASSIGNMENTS,
    UNDECODABLE_DECISIONS,
)
"""The names every scrape carries (the clock skew only once it was measured)."""


@dataclass(frozen=True)
class RigMetrics:
    """The values of one scrape."""

    outbox_depth: int
    stale: dict[str, int] = field(default_factory=lambda: {"ran_cached": 0, "refused": 0})
    undecodable: dict[str, int] = field(default_factory=lambda: {"assignments": 0, "decisions": 0})
    clock_skew_s: float | None = None
    unsafe: dict[str, int] = field(default_factory=lambda: {"ran_last_safe": 0, "refused": 0})
    held_refusals: int = 0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render(rig_id: str, depth: int | RigMetrics) -> str:
    """The metrics in Prometheus' text exposition format (a bare depth: the outbox only)."""
    rig = f'rig="{_label(rig_id)}"'
    if isinstance(depth, int):
        values, full = RigMetrics(depth), False
    else:
        values, full = depth, True
    lines = [
        f"# HELP {OUTBOX_DEPTH} Events in a rig's durable outbox that Kafka has not "
        "acknowledged yet.",
        f"# TYPE {OUTBOX_DEPTH} gauge",
        f"{OUTBOX_DEPTH}{{{rig}}} {values.outbox_depth}",
    ]
    if full:
        lines += [
            f"# HELP {STALE_ASSIGNMENTS} Session starts on an assignment the rig knew was stale, "
            "by what it did (ran_cached or refused).",
            f"# TYPE {STALE_ASSIGNMENTS} counter",
            *(
                f'{STALE_ASSIGNMENTS}{{{rig},action="{_label(action)}"}} {count}'
                for action, count in sorted(values.stale.items())
            ),
            f"# HELP {UNSAFE_ASSIGNMENTS} Assignments outside the rig's safety limits, by what it "
            "did (refused or ran_last_safe).",
            f"# TYPE {UNSAFE_ASSIGNMENTS} counter",
            *(
                f'{UNSAFE_ASSIGNMENTS}{{{rig},action="{_label(action)}"}} {count}'
                for action, count in sorted(values.unsafe.items())
            ),
            f"# HELP {HELD_REFUSALS} Sessions the rig refused because the mouse was held or not "
            "cleared (not weighed) by the welfare gate.",
            f"# TYPE {HELD_REFUSALS} counter",
            f"{HELD_REFUSALS}{{{rig}}} {values.held_refusals}",
            f"# HELP {UNDECODABLE_ASSIGNMENTS} Records of the rig's mice on the assignments "
            "topic that this rig cannot decode (a newer release wrote them).",
            f"# TYPE {UNDECODABLE_ASSIGNMENTS} counter",
            f"{UNDECODABLE_ASSIGNMENTS}{{{rig}}} {values.undecodable.get('assignments', 0)}",
            f"# HELP {UNDECODABLE_DECISIONS} Records of the rig's mice on the decisions topic "
            "that this rig cannot decode (a newer release wrote them).",
            f"# TYPE {UNDECODABLE_DECISIONS} counter",
            f"{UNDECODABLE_DECISIONS}{{{rig}}} {values.undecodable.get('decisions', 0)}",
        ]
        if values.clock_skew_s is not None:
            lines += [
                f"# HELP {CLOCK_SKEW} The rig's clock minus the broker's (smoothed; positive: "
                "ahead).",
                f"# TYPE {CLOCK_SKEW} gauge",
                f"{CLOCK_SKEW}{{{rig}}} {_number(values.clock_skew_s)}",
            ]
    return "\n".join(lines) + "\n"


def read_metrics(store_path: Path) -> RigMetrics:
    """The metric values from the rig's store (a fresh connection: scrapes come from any
    thread). Tables a store of an older release lacks count as empty."""
    with closing(sqlite3.connect(store_path, timeout=5)) as conn:
        depth = int(conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])
        held = 0
        with suppress(sqlite3.OperationalError):  # a store of an older release has none
            held = int(conn.execute("SELECT count(*) FROM held_refusals").fetchone()[0])
        values = RigMetrics(depth, held_refusals=held)
        with suppress(sqlite3.OperationalError):  # a store of an older release has none
            for action, count in conn.execute(
                "SELECT action, count(*) FROM unsafe_assignments GROUP BY action"
            ):
                values.unsafe[action] = int(count)
        try:
            for action, count in conn.execute(
                "SELECT action, count(*) FROM stale_runs GROUP BY action"
            ):
                values.stale[action] = int(count)
            for kind, count in conn.execute(
                "SELECT kind, count(*) FROM undecodable_records GROUP BY kind"
            ):
                values.undecodable[kind] = int(count)
            row = conn.execute("SELECT smoothed_s FROM clock_skew WHERE id = 1").fetchone()
        except sqlite3.OperationalError:
            return values
    if row is None:
        return values
    return RigMetrics(
        depth, values.stale, values.undecodable, float(row[0]), values.unsafe, values.held_refusals
    )


class OutboxDepthExporter:
    """Serves the rig's metrics (the outbox depth and the others above) on ``/metrics`` from a
    background thread.

    Args:
        store_path: the rig's SQLite store.
        rig_id: the ``rig`` label.
        port: TCP port (0 picks a free one; see :attr:`port`).
        host: address to bind.
    """

    def __init__(self, store_path: Path, rig_id: str, port: int, host: str = "0.0.0.0") -> None:
        self.store_path = store_path
        self.rig_id = rig_id
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render(exporter.rig_id, read_metrics(exporter.store_path)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None  # scrapes are not worth a line each

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port the exporter listens on."""
        return int(self._server.server_address[1])

    def depth(self) -> int:
        """Unsent events now."""
        return read_metrics(self.store_path).outbox_depth

    def start(self) -> OutboxDepthExporter:
        """Starts serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving."""
        self._server.shutdown()
        self._server.server_close()


RigMetricsExporter = OutboxDepthExporter
"""The exporter under the name of what it serves now (every rig metric)."""
