"""The one Kafka adapter: how every service and command connects to the brokers.

Every kafka-python producer, consumer and admin client of the services is built here, from a
:class:`KafkaConnection` (validated settings: the brokers and, for a secured cluster, the
security protocol, SASL mechanism and credentials, and the CA), so the choices that matter
are made once:

- a producer waits for every in-sync replica (``acks=all``) and is idempotent, so a retried
  send is written once and in order per partition;
- a consumer reads without a group and without auto-commit unless asked (the services assign
  partitions themselves and keep their positions with their output);
- every client reconnects within :data:`RECONNECT_BACKOFF_MAX_MS` of a broker's return.

The faust processor takes the same connection through :meth:`KafkaConnection.faust_options`.
The rig has its own link (it imports only the contract); see :mod:`shaping.rig.link.drain`.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

RECONNECT_BACKOFF_MAX_MS = 2000
"""Longest pause between two tries to reach a broker that went away (kafka-python's default,
30 s, grows during an outage and leaves clients idle long after the broker is back)."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaConnection(BaseSettings):
    """Where the brokers are and how to authenticate to them.

    Each field has an environment variable: ``SHAPING_BOOTSTRAP`` for the brokers, and
    ``SHAPING_KAFKA_<FIELD>`` for the others (``SHAPING_KAFKA_SECURITY_PROTOCOL``,
    ``SHAPING_KAFKA_SASL_USERNAME``...). The password may come from a file instead
    (``SHAPING_KAFKA_SASL_PASSWORD_FILE``), which must not be readable by others.

    Attributes:
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        security_protocol: PLAINTEXT for a local development broker; SASL_SSL in production.
        sasl_mechanism: the SASL mechanism (with a SASL protocol).
        sasl_username: the principal's name.
        sasl_password: its password (never printed: a secret).
        ssl_cafile: the CA that signed the brokers' certificates (None: the system's).
    """

    model_config = SettingsConfigDict(env_prefix="SHAPING_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str = Field(default="127.0.0.1:9092", validation_alias="SHAPING_BOOTSTRAP")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: Any) -> Any:
        path = os.environ.get("SHAPING_KAFKA_SASL_PASSWORD_FILE")
        if not path or not isinstance(data, dict) or data.get("sasl_password"):
            return data
        try:
            mode = os.stat(path).st_mode
            if mode & 0o077:
                raise ValueError(
                    f"{path} is readable by others (mode {mode & 0o777:o}); "
                    f"`chmod 600 {path}` first"
                )
            password = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the Kafka password from {path}: {exc}") from exc
        return {**data, "sasl_password": password}

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConnection:
        servers = [s.strip() for s in self.bootstrap.split(",")]
        for server in servers:
            host, colon, port = server.rpartition(":")
            if not colon:
                host, port = server, "9092"
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(
                f"{self.security_protocol} needs SHAPING_KAFKA_SASL_MECHANISM, "
                "SHAPING_KAFKA_SASL_USERNAME and SHAPING_KAFKA_SASL_PASSWORD"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"a SASL mechanism needs a SASL protocol, not {self.security_protocol}"
            )
        return self

    @classmethod
    def of(cls, bootstrap: str | None = None) -> KafkaConnection:
        """The connection from the environment, with ``bootstrap`` (a command's --bootstrap)
        on top when given."""
        if bootstrap is None:
            return cls()
        return cls(SHAPING_BOOTSTRAP=bootstrap)  # type: ignore[call-arg]

    def client_options(self) -> dict[str, Any]:
        """kafka-python's connection keyword arguments."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol,
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None  # checked by the validator
            options.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value(),
            )
        if self.security_protocol.endswith("SSL") and self.ssl_cafile:
            options["ssl_cafile"] = self.ssl_cafile
        return options

    def faust_options(self) -> dict[str, Any]:
        """faust-streaming's ``App`` keyword arguments for the same brokers and credentials."""
        servers = [f"kafka://{s.strip()}" for s in self.bootstrap.split(",") if s.strip()]
        options: dict[str, Any] = {"broker": servers}
        if self.security_protocol == "PLAINTEXT":
            return options
        import faust

        context = None
        if self.security_protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None and self.sasl_username is not None
            options["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                mechanism=self.sasl_mechanism,
                ssl_context=context,
            )
        else:
            options["broker_credentials"] = faust.SSLCredentials(context)
        return options


def _connection(connection: KafkaConnection | str | None) -> KafkaConnection:
    if isinstance(connection, KafkaConnection):
        return connection
    return KafkaConnection.of(connection)


def producer(
    connection: KafkaConnection | str | None, client_id: str, **options: Any
) -> KafkaProducer:
    """An idempotent producer that waits for every in-sync replica (see the module).

    Args:
        connection: the connection, or just the brokers (the rest from the environment).
        client_id: the client's name in the brokers' logs.
        options: other kafka-python producer options (``linger_ms``, ``max_block_ms``...).
    """
    from kafka import KafkaProducer

    settings: dict[str, Any] = {
        **_connection(connection).client_options(),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
    }
    return KafkaProducer(**{**settings, **options})


def consumer(
    connection: KafkaConnection | str | None, client_id: str, **options: Any
) -> KafkaConsumer:
    """A consumer that reads from the start, in no group and committing nothing unless
    ``options`` say otherwise (the services assign partitions and keep their own positions)."""
    from kafka import KafkaConsumer

    settings: dict[str, Any] = {
        **_connection(connection).client_options(),
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    return KafkaConsumer(**{**settings, **options})


def admin(
    connection: KafkaConnection | str | None, client_id: str, **options: Any
) -> KafkaAdminClient:
    """An admin client (topic creation and description, offsets, replay's hand-over)."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        **{**_connection(connection).client_options(), "client_id": client_id, **options}
    )


def confluent_options(connection: KafkaConnection, client_id: str) -> dict[str, Any]:
    """librdkafka's settings (confluent-kafka) for the same brokers and credentials as the
    kafka-python clients of this module: for the bulk paths that read with confluent-kafka
    (``shaping replay``'s reader)."""
    options: dict[str, Any] = {
        "bootstrap.servers": connection.bootstrap,
        "client.id": client_id,
        "security.protocol": connection.security_protocol.lower(),
        "reconnect.backoff.max.ms": 2000,
    }
    if connection.security_protocol.startswith("SASL"):
        assert connection.sasl_password is not None
        options.update(
            {
                "sasl.mechanism": connection.sasl_mechanism,
                "sasl.username": connection.sasl_username,
                "sasl.password": connection.sasl_password.get_secret_value(),
            }
        )
    if connection.security_protocol.endswith("SSL") and connection.ssl_cafile:
        options["ssl.ca.location"] = str(connection.ssl_cafile)
    return options


def refusal_in_words(exc: BaseException, connection: KafkaConnection | None = None) -> str | None:
    """A broker's authorisation refusal (kafka-python's ``AuthorizationError``) said in words:
    who was refused what, and where the roles are written down; None for any other error."""
    from kafka.errors import AuthorizationError

    if not isinstance(exc, AuthorizationError):
        return None
    who = (
        f"the principal {connection.sasl_username!r}"
        if connection is not None and connection.sasl_username
        else "this client"
    )
    what = type(exc).__name__.removesuffix("AuthorizationFailedError").lower() or "resource"
    detail = str(exc).split(":", 1)[-1].strip()
    return (
        f"Kafka refused: {who} is not authorised for this {what}"
        + (f" ({detail})" if detail else "")
        + f" [{type(exc).__name__}]; the roles and what each may do are in docs/security.md"
    )
