"""The one way a ``shaping`` command fails (services/cli/options.py ``fail``): a red
``error:`` line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from shaping.services.cli.options import fail


def failing(problem: str | Exception, **kw: int) -> tuple[int, str, BaseException | None]:
    """Runs a one-command app that fails with ``problem``: its exit status, its output and the
    cause of its exit."""
    app = typer.Typer()
    cause: list[BaseException | None] = []

    @app.command()
    def command() -> None:
        try:
            fail(problem, **kw)
        except typer.Exit as exit_:
            cause.append(exit_.__cause__)
            raise

    result = CliRunner().invoke(app, [])
    return result.exit_code, result.output, cause[0]


def test_a_message_is_printed_as_written_and_exits_with_2_unless_told() -> None:
    code, out, cause = failing("--set 'x': write NAME=VALUE")
    assert (code, out, cause) == (2, "error: --set 'x': write NAME=VALUE\n", None)
    code, out, _ = failing("Kafka refused the event", code=1)
    assert (code, out) == (1, "error: Kafka refused the event\n")


@pytest.mark.parametrize("code", [1, 2])
def test_an_exceptions_text_is_escaped_and_becomes_the_cause(code: int) -> None:
    problem = ValueError("no mouse 'M\x1b[2J1'")
    status, out, cause = failing(problem, code=code)
    assert status == code
    assert out == "error: no mouse 'M\\x1b[2J1'\n"
    assert cause is problem
