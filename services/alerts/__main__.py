"""``python -m shaping.services.alerts``: runs the alerts service with settings from
``SHAPING_*`` (built by :mod:`shaping.services.bootstrap`) and the lab's rules from
``SHAPING_ALERT_RULES``, or the built-in rules with the heartbeats on when it is unset (with the
welfare policy ``SHAPING_WELFARE_POLICY``). A bad value or file stops it with its problems and
exit status 2. ``SHAPING_ALERTS_METRICS_PORT`` serves its metrics; ``shaping alerts run`` is
the same service with options."""

import os
import sys
from pathlib import Path

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError
from shaping.services.alerts.checks import FileInvalid
from shaping.services.curricula.policy import PolicyInvalid


def main() -> None:
    """Reads the settings and the rules, then runs until SIGTERM or SIGINT."""
    try:
        settings = bootstrap.settings()
        path = os.environ.get("SHAPING_ALERT_RULES", "").strip()
        policy = os.environ.get("SHAPING_WELFARE_POLICY", "").strip() or None
        rules = bootstrap.alert_rules(Path(path) if path else None, policy)
        port = bootstrap.port_from_env("SHAPING_ALERTS_METRICS_PORT")
    except (SettingsError, FileInvalid, PolicyInvalid) as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    bootstrap.run_alerts_service(settings, rules, bootstrap.until_signalled(), port)


if __name__ == "__main__":
    main()
