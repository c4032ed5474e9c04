"""Who sends an operator's command: the authenticated principal, or (on a plaintext broker) a
name the operator claims.

On a secured deployment (the settings' Kafka connection logs in with SASL,
:attr:`~shaping.services.adapters.kafka.KafkaConnection.sasl_username`), the broker has checked
who the operator is, so that name is the one every command carries in ``requested_by`` and the
answering event in its ``*_by`` field (``enrolled_by``, ``overridden_by``, ``ejected_by``,
``adjusted_by``, ``migrated_by``). ``--by`` may repeat that name, never another one: a command
that names someone else is refused before anything is sent. ``$SHAPING_OPERATOR`` is ignored
there (it is a default for the plaintext case, not a claim made on purpose).

On a plaintext broker nothing is authenticated: the name is ``--by``, else
``$SHAPING_OPERATOR``, else the login name, and it is a claim (:attr:`Operator.authenticated`
is False). The log does not record which kind of deployment wrote an event, so the audit
trail shows the name either way; docs/security.md ("Operators' identity") says what it means.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from shaping.services.adapters.kafka import KafkaConnection
    from shaping.services.adapters.settings import Settings


class IdentityError(OperatorError):
    """The operator named someone other than the principal the broker authenticates."""


@dataclass(frozen=True)
class Operator:
    """Who sends a command.

    Attributes:
        name: what the command's ``requested_by`` holds.
        authenticated: True when ``name`` is the principal the broker authenticated (SASL);
            False when it is a claim (plaintext broker: ``--by``, $SHAPING_OPERATOR or the
            login name).
    """

    name: str
    authenticated: bool


def principal(connection: KafkaConnection) -> str | None:
    """The name the connection authenticates as (a SASL protocol with a user name); None for
    a plaintext or TLS-only connection, where the broker knows no name."""
    if connection.security_protocol.startswith("SASL") and connection.sasl_username:
        return connection.sasl_username
    return None


def _quoted(value: str) -> str:
    from shaping.schemas.text import printable

    return repr(printable(value))


def operator_identity(
    settings: Settings | None,
    by: str | None,
    environ: Mapping[str, str] | None = None,
) -> Operator:
    """Who sends a command with these settings and this ``--by`` (None: not given).

    Args:
        settings: the command's settings; None (no connection known) counts as plaintext.
        by: the name the operator gave, if any.
        environ: where $SHAPING_OPERATOR is read (default: the process environment).

    Raises:
        IdentityError: the connection is authenticated as one principal and ``by`` names
            another (or is blank).
    """
    authenticated = principal(settings.kafka) if settings is not None else None
    if authenticated is not None:
        if by is not None and by != authenticated:
            raise IdentityError(
                f"--by {_quoted(by)} is not who you are: this deployment authenticates you as "
                f"{_quoted(authenticated)} (SHAPING_KAFKA_SASL_USERNAME), and every command "
                "carries that name; drop --by, or log in as that operator"
            )
        return Operator(authenticated, True)
    env = os.environ if environ is None else environ
    return Operator(by or env.get("SHAPING_OPERATOR") or getpass.getuser(), False)
