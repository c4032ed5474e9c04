"""The ``shaping`` command: entry points only. Each subcommand parses its arguments and calls
a use case in :mod:`shaping.services.operator`, the curricula compiler, the processor or the
projector; nothing outside this package imports it (``make lint-imports``)."""

from shaping.services.cli.main import app, main

__all__ = ["app", "main"]
