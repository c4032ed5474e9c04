"""``python -m shaping.services.notifier``: runs the notifier with settings from ``SHAPING_*``
(built by :mod:`shaping.services.bootstrap`) and the routing file ``SHAPING_ALERT_ROUTING`` (a
bad one stops it with its problems and exit status 2). ``SHAPING_NOTIFIER_METRICS_PORT``
serves its metrics."""

import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError
from shaping.services.alerts.checks import FileInvalid
from shaping.services.notifier.metrics import NotifierMetrics
from shaping.services.notifier.routing import load_routing
from shaping.services.notifier.runner import run_notifier


def main() -> None:
    """Reads the settings and the routing, then runs until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        path = os.environ.get("SHAPING_ALERT_ROUTING", "").strip()
        if not path:
            raise SettingsError("SHAPING_ALERT_ROUTING", "name the notifier's routing file")
        routing = load_routing(Path(path))
        port_text = os.environ.get("SHAPING_NOTIFIER_METRICS_PORT", "").strip()
        port = int(port_text) if port_text else None
    except (SettingsError, FileInvalid) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError:
        print("error: SHAPING_NOTIFIER_METRICS_PORT: not a port number", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    metrics = NotifierMetrics(bootstrap.metric_registry())
    server = metrics.serve(port) if port is not None else None
    try:
        run_notifier(settings.kafka, settings.topics, routing, bootstrap.codec(), stop, metrics)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
