"""``python -m shaping.services.cli``: the ``shaping`` command."""

from shaping.services.cli.main import main

main()
