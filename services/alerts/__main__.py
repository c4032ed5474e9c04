"""``python -m shaping.services.alerts``: runs the alerts service with settings from
``SHAPING_*`` (built by :mod:`shaping.services.bootstrap`) and the lab's rules from
``SHAPING_ALERT_RULES`` (a file; a bad one stops it with its problems and exit status 2).
``SHAPING_ALERTS_METRICS_PORT`` serves its metrics."""

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
from shaping.services.alerts.config import load_rules
from shaping.services.alerts.metrics import AlertsMetrics
from shaping.services.alerts.rules import AlertEngine
from shaping.services.alerts.runner import run_alerts


def main() -> None:
    """Reads the settings and the rules, then runs until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        path = os.environ.get("SHAPING_ALERT_RULES", "").strip()
        if not path:
            raise SettingsError("SHAPING_ALERT_RULES", "name the lab's alert-rules file")
        rules = load_rules(Path(path))
        port_text = os.environ.get("SHAPING_ALERTS_METRICS_PORT", "").strip()
        port = int(port_text) if port_text else None
    except (SettingsError, FileInvalid) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError:
        print("error: SHAPING_ALERTS_METRICS_PORT: not a port number", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    metrics = AlertsMetrics(bootstrap.metric_registry())
    server = metrics.serve(port) if port is not None else None
    try:
        run_alerts(
            settings.kafka,
            settings.topics,
            lambda: AlertEngine(rules),
            bootstrap.codec(),
            stop,
            metrics,
        )
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
