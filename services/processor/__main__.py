"""``python -m shaping.services.processor``: runs the processor with settings from ``SHAPING_*``
(built by :mod:`shaping.services.bootstrap`; a bad value stops it with a one-line error and
exit status 2)."""

import sys

from shaping.schemas.text import printable
from shaping.services import bootstrap
from shaping.services.adapters.settings import SettingsError


def main() -> None:
    """Reads the settings, creates the topics that are missing, builds the processor's
    collaborators, then runs it until it is stopped."""
    try:
        settings = bootstrap.settings()
        welfare = bootstrap.welfare_policy(settings)
    except SettingsError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    from shaping.services.processor.app import run_processor

    bootstrap.ensure_topics(settings)
    codec = bootstrap.codec()
    catalog, follower = bootstrap.following_catalog(settings, codec)
    run_processor(settings, codec, catalog, follower, welfare=welfare)


if __name__ == "__main__":
    main()
