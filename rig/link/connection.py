"""How the rig reaches Kafka: the brokers and, for a secured cluster, how it proves who it is.

Every kafka-python client the rig builds (the outbox drainer's producer and reconcile
consumer, the assignment follower, :class:`~shaping.rig.link.kafka.KafkaRigTransport`) takes
its connection options from :func:`client_options`, so the security settings are applied in
one place. They come from the ``[broker]`` table of the rig config
(:func:`shaping.rig.config.load_config` checks them, the password file included); no
environment variable is needed.

A plaintext link (the default) gives kafka-python nothing but the brokers and the reconnect
backoff, exactly as before the settings existed. The rig imports only the contract, so this
is the rig's own small counterpart of the services' ``KafkaConnection``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shaping.rig.errors import ConfigError
from shaping.schemas.topics import TopicNames

RECONNECT_BACKOFF_MAX_MS = 2000
"""Longest pause between two tries to reach a broker that went away (kafka-python's default,
30 s, grows during an outage and left rigs idle up to 18 s after the broker was back)."""

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL"]
SECURITY_PROTOCOLS: tuple[SecurityProtocol, ...] = ("PLAINTEXT", "SASL_SSL", "SSL")
"""The protocols a rig may speak (no SASL_PLAINTEXT: it would send the password in clear)."""

SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]
SASL_MECHANISMS: tuple[SaslMechanism, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256")


@dataclass(frozen=True)
class KafkaSecurity:
    """How the rig authenticates to the brokers (``[broker]`` of the config).

    Attributes:
        protocol: ``PLAINTEXT`` (a local development broker), ``SASL_SSL`` (a secured
            cluster: TLS, then SCRAM) or ``SSL`` (TLS only).
        sasl_mechanism: with SASL_SSL, ``SCRAM-SHA-512`` or ``SCRAM-SHA-256``.
        sasl_username: with SASL_SSL, the rig's principal.
        sasl_password_file: with SASL_SSL, a file holding its password, readable by its owner
            only (read each time a client is built, so a rotated password is used on the next
            connection).
        ssl_cafile: with TLS, the CA (PEM) that signed the brokers' certificates (None: the
            system's CAs).
        ingress: with SASL_SSL, whether the rig publishes its events to its principal's
            ingress topic, ``<prefix>.rig.<sasl_username>``, which the ingress gate forwards
            to the events topic (a secured cluster lets no rig write the events topic itself;
            docs/security.md). False: straight to the events topic.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ingress: bool = False

    @property
    def ingress_name(self) -> str | None:
        """The principal whose ingress topic the rig's events go to (None: the events topic)."""
        return self.sasl_username if self.ingress and self.protocol == "SASL_SSL" else None

    def describe(self) -> str:
        """The settings in words (never the password)."""
        if self.protocol == "PLAINTEXT":
            return "PLAINTEXT (no TLS, no authentication)"
        ca = f"CA {self.ssl_cafile}" if self.ssl_cafile else "the system's CAs"
        if self.protocol == "SSL":
            return f"SSL (TLS with {ca}, no SASL)"
        via = ", events through its ingress topic" if self.ingress_name else ""
        return f"SASL_SSL as {self.sasl_username} ({self.sasl_mechanism}, TLS with {ca}{via})"


@dataclass(frozen=True)
class KafkaLink:
    """The brokers and how to authenticate to them.

    Attributes:
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        security: the security settings (plaintext by default).
    """

    bootstrap: str
    security: KafkaSecurity = KafkaSecurity()

    @classmethod
    def of(cls, link: KafkaLink | str) -> KafkaLink:
        """``link`` itself, or a plaintext link to the brokers ``link`` names."""
        return link if isinstance(link, KafkaLink) else cls(link)

    def events_topic(self, topics: TopicNames) -> str:
        """Where the rig's events go: its principal's ingress topic when
        :attr:`KafkaSecurity.ingress` says so, else the events topic."""
        name = self.security.ingress_name
        return topics.events if name is None else topics.rig_ingress(name)


def client_options(link: KafkaLink | str) -> dict[str, Any]:
    """kafka-python's connection keyword arguments for ``link`` (a plain string is a
    plaintext link to those brokers).

    Raises:
        ConfigError: the password file cannot be read, is empty, or is readable by others.
    """
    link = KafkaLink.of(link)
    options: dict[str, Any] = {
        "bootstrap_servers": link.bootstrap,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    security = link.security
    if security.protocol == "PLAINTEXT":
        return options
    options["security_protocol"] = security.protocol
    if security.ssl_cafile is not None:
        options["ssl_cafile"] = str(security.ssl_cafile)
    if security.protocol == "SASL_SSL":
        if security.sasl_password_file is None:
            raise ConfigError("SASL_SSL needs broker.sasl_password_file")
        options.update(
            sasl_mechanism=security.sasl_mechanism,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=read_password(security.sasl_password_file),
        )
    return options


def read_password(path: Path, entry: str = "broker.sasl_password_file") -> str:
    """The password in ``path`` (surrounding whitespace removed).

    Raises:
        ConfigError: naming ``entry`` and the file: it is missing or unreadable, not a
            regular file, readable or writable by its group or others (it must be mode 600),
            or empty.
    """
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{entry}: cannot read the Kafka password file {path}: {exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{entry}: {path} is not a file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{entry}: the Kafka password file {path} is open to others (mode {mode:o}); "
            f"it must be readable by its owner only: `chmod 600 {path}`"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{entry}: cannot read the Kafka password file {path}: {exc}") from None
    if not password:
        raise ConfigError(f"{entry}: the Kafka password file {path} is empty")
    return password


def check_ca_file(path: Path, entry: str = "broker.ssl_cafile") -> None:
    """Raises ConfigError naming ``entry`` unless ``path`` is a readable file."""
    if not path.is_file():
        raise ConfigError(f"{entry}: no CA file at {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{entry}: the CA file {path} is not readable")
