"""``python -m shaping.services.ingress``: runs the ingress gate with settings from
``SHAPING_*`` (built by :mod:`shaping.services.bootstrap`; a bad value stops it with a one-line
error and exit status 2). ``SHAPING_INGRESS_METRICS_PORT`` serves its metrics."""

import logging
import os
import signal
import sys
import threading

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError


def main() -> None:
    """Reads the settings, then runs the gate until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        port_text = os.environ.get("SHAPING_INGRESS_METRICS_PORT", "").strip()
        port = int(port_text) if port_text else None
    except SettingsError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError:
        print("error: SHAPING_INGRESS_METRICS_PORT: not a port number", file=sys.stderr)
        raise SystemExit(2) from None
    from kafka.errors import KafkaError

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        bootstrap.run_ingress(settings, stop, metrics_port=port)
    except KafkaError as exc:
        print(f"error: the ingress gate cannot reach Kafka: {printable(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
