"""The rig's Prometheus metric, served without prometheus-client (the rig stays light).

``shaping_rig_outbox_depth{rig="..."}`` (gauge): events in the rig's durable outbox that Kafka
has not acknowledged yet; the name is in the services' catalogue
(``services.common.metrics.RIG_OUTBOX_DEPTH``) and on the pipeline dashboard. ``shaping rig
run --metrics-port N`` serves it on ``/metrics`` while the agent runs.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OUTBOX_DEPTH = "shaping_rig_outbox_depth"


def render(rig_id: str, depth: int) -> str:
    """The metric in Prometheus' text exposition format."""
    label = rig_id.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f"# HELP {OUTBOX_DEPTH} Events in a rig's durable outbox that Kafka has not "
        "acknowledged yet.\n"
        f"# TYPE {OUTBOX_DEPTH} gauge\n"
        f'{OUTBOX_DEPTH}{{rig="{label}"}} {depth}\n'
    )


class OutboxDepthExporter:
    """Serves the outbox depth on ``/metrics`` from a background thread.

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
                body = render(exporter.rig_id, exporter.depth()).encode()
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
        """Unsent events now (a fresh connection per scrape: scrapes come from any thread)."""
        with closing(sqlite3.connect(self.store_path, timeout=5)) as conn:
            row = conn.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()
        return int(row[0])

    def start(self) -> OutboxDepthExporter:
        """Starts serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving."""
        self._server.shutdown()
        self._server.server_close()
