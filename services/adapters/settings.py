"""Service settings, read from the environment so the local stack, docker-compose and tests
drive the services the same way.

A command builds them one way, :meth:`Settings.load`: the environment (``SHAPING_*``) with the
options given on the command line on top, every value validated. A bad value is refused with
:class:`SettingsError`, a one-line message that names the variable (or the option) and the
rule, which the command line prints as ``error: ...`` (exit status 2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection

ENV_PREFIX = "SHAPING_"

TOPIC_NAME_MAX = 249
"""Kafka's longest topic name."""

_TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_LONGEST_SUFFIX = max(
    len(name) - len("x") for name in TopicNames.with_prefix("x").all()
)  # ".dead-letter"

_CHANGELOG_ROOM = 32
"""Characters a processor id leaves for faust's ``-<table>-changelog`` suffix."""

OPTIONS = {
    "bootstrap": "--bootstrap",
    "topic_prefix": "--prefix",
    "db_url": "--db-url",
    "partitions": "--partitions",
}
"""The command-line option that overrides each field (the others come from the environment
only)."""


class SettingsError(Exception):
    """A setting with a value its rule refuses; the message is one line and names the
    environment variable or option that gave it.

    Attributes:
        field: the setting (``bootstrap``, ``partitions``...; ``kafka`` for the rest of the
            connection).
        problem: what is wrong, without the variable's name.
    """

    def __init__(self, where: str, problem: str, field: str = "") -> None:
        super().__init__(f"{where}: {problem}".replace("\n", " "))
        self.field = field
        self.problem = problem

    def given_by(self, overrides: Mapping[str, Any]) -> SettingsError:
        """The same problem, naming the command-line option when ``overrides`` gave it."""
        if self.field in overrides and self.field in OPTIONS:
            return SettingsError(OPTIONS[self.field], self.problem, self.field)
        return self


class Settings(BaseSettings):
    """Where the services find Kafka and the database, and how topics are named.

    Every field has an environment variable (in brackets) and a default for a laptop. The
    model is frozen: derive another with :meth:`updated` (validated), not ``model_copy``.

    Attributes:
        bootstrap: Kafka bootstrap servers [SHAPING_BOOTSTRAP]; the rest of the connection
            (security protocol, SASL, CA) is :attr:`kafka`, from ``SHAPING_KAFKA_*``.
        topic_prefix: prefix of every topic name [SHAPING_TOPIC_PREFIX]; letters, digits,
            ``.``, ``_`` and ``-``, short enough that every topic name stays legal.
        partitions: partitions per topic [SHAPING_PARTITIONS], at least 1.
        processor_id: faust application id, also its consumer group and the first part of its
            changelog topics' names [SHAPING_PROCESSOR_ID].
        projector_id: the projector's name in its offsets table [SHAPING_PROJECTOR_ID].
        db_url: SQLAlchemy URL of the status tables [SHAPING_DB_URL].
        data_dir: working directory for local state [SHAPING_DATA_DIR].
        clock_max_ahead_s: how far (seconds, > 0) an event may be dated ahead of the broker's
            time of its message before the processor refuses it [SHAPING_CLOCK_MAX_AHEAD_S].
        clock_max_behind_days: how far (days, > 0) before it [SHAPING_CLOCK_MAX_BEHIND_DAYS];
            a rig that was offline drains its outbox late, so this is wide.
        command_max_age_s: how long (seconds, > 0) after the broker took an operator's command
            the processor may still act on it [SHAPING_COMMAND_MAX_AGE_S].
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True
    )

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "shaping"
    partitions: int = Field(default=4, ge=1)
    processor_id: str = "shaping-processor"
    projector_id: str = "projector"
    db_url: str = "sqlite:///shaping.sqlite"
    data_dir: str = ".shaping"
    clock_max_ahead_s: float = Field(default=900.0, gt=0, allow_inf_nan=False)
    clock_max_behind_days: float = Field(default=366.0, gt=0, allow_inf_nan=False)
    command_max_age_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)

    _kafka: KafkaConnection = PrivateAttr()

    @field_validator("topic_prefix")
    @classmethod
    def _legal_prefix(cls, value: str) -> str:
        _topic_part(value, TOPIC_NAME_MAX - _LONGEST_SUFFIX)
        return value

    @field_validator("processor_id")
    @classmethod
    def _legal_processor_id(cls, value: str) -> str:
        # faust names its changelog topics <processor_id>-<table>-changelog
        # (services/processor/state_store.py): leave room for the longest table name.
        _topic_part(value, TOPIC_NAME_MAX - _CHANGELOG_ROOM)
        return value

    @field_validator("projector_id", "db_url", "data_dir")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    def model_post_init(self, context: Any, /) -> None:
        # The brokers come from here (an option may have overridden them); the security
        # settings from SHAPING_KAFKA_*, checked now so a bad one stops the command at once.
        try:
            self._kafka = KafkaConnection.of(self.bootstrap)
        except ValidationError as exc:
            raise _kafka_error(exc) from None

    @property
    def kafka(self) -> KafkaConnection:
        """The validated connection to the brokers (:attr:`bootstrap` and ``SHAPING_KAFKA_*``),
        for :mod:`shaping.services.adapters.kafka`."""
        return self._kafka

    @property
    def topics(self) -> TopicNames:
        """The topic names under this prefix."""
        return TopicNames.with_prefix(self.topic_prefix)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """The settings: the environment (``SHAPING_*``, then the defaults) with ``overrides``
        on top; an override that is None (an option not given) is left out.

        Raises:
            SettingsError: a value breaks its rule (the message names its variable, or its
                option when an override gave it).
        """
        given = {name: value for name, value in overrides.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise _error(exc).given_by(given) from None
        except SettingsError as exc:
            raise exc.given_by(given) from None

    def updated(self, **changes: Any) -> Settings:
        """These settings with ``changes``, validated (``model_copy`` would not check them);
        a change that is None is left out.

        Raises:
            SettingsError: a changed value breaks its rule.
        """
        given = {name: value for name, value in changes.items() if value is not None}
        try:
            return type(self)(**{**self.model_dump(), **given})
        except ValidationError as exc:
            raise _error(exc).given_by(given) from None
        except SettingsError as exc:
            raise exc.given_by(given) from None


def _topic_part(value: str, longest: int) -> None:
    if not _TOPIC_CHARS.fullmatch(value):
        raise ValueError("must be letters, digits, '.', '_' or '-' (it names Kafka topics)")
    if value in (".", ".."):
        raise ValueError(f"{value!r} is not a legal Kafka topic name")
    if len(value) > longest:
        raise ValueError(f"must be at most {longest} characters (it names Kafka topics)")


def _error(exc: ValidationError) -> SettingsError:
    """The first problem of a validation of :class:`Settings`, in one line, naming its
    environment variable."""
    first = exc.errors(include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    return SettingsError(f"{ENV_PREFIX}{field.upper()}", _problem(first), field)


def _kafka_error(exc: ValidationError) -> SettingsError:
    """The first problem of the connection's settings (``SHAPING_BOOTSTRAP`` and
    ``SHAPING_KAFKA_*``), in one line."""
    first = exc.errors(include_url=False)[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    problem = _problem(first, secret="password" in field)
    if field == f"{ENV_PREFIX}BOOTSTRAP" or (not field and "bootstrap" in problem):
        return SettingsError(f"{ENV_PREFIX}BOOTSTRAP", problem, "bootstrap")
    if field:
        return SettingsError(f"{ENV_PREFIX}KAFKA_{field.upper()}", problem, "kafka")
    return SettingsError("Kafka connection", problem, "kafka")


def _problem(error: Any, secret: bool = False) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if error["loc"] and not secret and isinstance(value, str | int | float):
        return f"{message} (got {value!r})"
    return message


__all__ = ["OPTIONS", "Settings", "SettingsError"]
