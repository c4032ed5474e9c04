"""``python -m shaping.services.ingress``: runs the ingress gate with settings from
``SHAPING_*`` (built by :mod:`shaping.services.bootstrap`; a bad value stops it with a one-line
error and exit status 2). ``SHAPING_INGRESS_METRICS_PORT`` serves its metrics."""

import sys

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError


def main() -> None:
    """Reads the settings, then runs the gate until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        port = bootstrap.port_from_env("SHAPING_INGRESS_METRICS_PORT")
    except SettingsError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    from kafka.errors import KafkaError

    try:
        bootstrap.run_ingress(settings, bootstrap.until_signalled(), metrics_port=port)
    except KafkaError as exc:
        print(f"error: the ingress gate cannot reach Kafka: {printable(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
