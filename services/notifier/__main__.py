"""``python -m shaping.services.notifier``: runs the notifier with settings from ``SHAPING_*``
(built by :mod:`shaping.services.bootstrap`) and the routing file ``SHAPING_ALERT_ROUTING`` (a
bad one stops it with its problems and exit status 2). ``SHAPING_NOTIFIER_METRICS_PORT``
serves its metrics; ``shaping notifier run`` is the same service with options."""

import os
import sys
from pathlib import Path

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError
from shaping.services.alerts.checks import FileInvalid
from shaping.services.notifier.routing import load_routing


def main() -> None:
    """Reads the settings and the routing, then runs until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        path = os.environ.get("SHAPING_ALERT_ROUTING", "").strip()
        if not path:
            raise SettingsError("SHAPING_ALERT_ROUTING", "name the notifier's routing file")
        routing = load_routing(Path(path))
        port = bootstrap.port_from_env("SHAPING_NOTIFIER_METRICS_PORT")
    except (SettingsError, FileInvalid) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    bootstrap.run_notifier_service(settings, routing, bootstrap.until_signalled(), port)


if __name__ == "__main__":
    main()
