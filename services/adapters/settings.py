"""Service settings, read from the environment so the local stack, docker-compose and tests
drive the services the same way.

A command builds them one way, :meth:`Settings.load`: the environment (``SHAPING_*``) with the
options given on the command line on top, every value validated. A bad value is refused with
:class:`SettingsError`, a one-line message that names the variable (or the option) and the
rule, which the command line prints as ``error: ...`` (exit status 2).

Secrets never need to be in a committed file or on a command line. Besides plain variables,
the settings read two kinds of file, each refused when others may read it (mode ``0600`` or
stricter, else a :class:`SettingsError` saying ``chmod 600``):

* ``SHAPING_DB_PASSWORD_FILE``: the password of the database user named in the URL
  (``SHAPING_DB_URL`` or ``--db-url``), put into the URL when it has none (a password in the
  URL wins; a SQLite URL needs none). ``SHAPING_KAFKA_SASL_PASSWORD_FILE`` is Kafka's twin.
* ``SHAPING_CREDENTIALS_FILE``: an env file of ``SHAPING_*=value`` lines, the format
  ``set -a; . FILE; set +a`` reads (``#`` comments, ``export``, values plain or in single or
  double quotes, no ``$`` expansion). Each variable it sets is used unless the environment
  sets it too: the environment wins. The local stack writes one for the operator
  (``infra/stack.sh``); ``infra/postgres/postgres.sh`` and ``infra/kafka/kafka.sh`` write one
  per role or principal.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection

ENV_PREFIX = "SHAPING_"

CREDENTIALS_FILE = "SHAPING_CREDENTIALS_FILE"
"""The variable naming an env file of ``SHAPING_*`` settings (mode 0600)."""

DB_PASSWORD_FILE = "SHAPING_DB_PASSWORD_FILE"
"""The variable naming a file (mode 0600) that holds the database user's password."""

KAFKA_PASSWORD_FILE = "SHAPING_KAFKA_SASL_PASSWORD_FILE"

_CREDENTIAL_LINE = re.compile(r"(?:export\s+)?(SHAPING_[A-Z0-9_]+)=(.*)")
_PLAIN_VALUE = re.compile(r"[^\s'\"$`\\;&|<>()]*")

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
        db_url: SQLAlchemy URL of the status tables [SHAPING_DB_URL]; with the password of
            ``SHAPING_DB_PASSWORD_FILE`` put in when the URL has none (never shown in the
            settings' repr: use :attr:`db_url_shown` in messages).
        data_dir: working directory for local state [SHAPING_DATA_DIR].
        clock_max_ahead_s: how far (seconds, > 0) an event may be dated ahead of the broker's
            time of its message before the processor refuses it [SHAPING_CLOCK_MAX_AHEAD_S].
        clock_max_behind_days: how far (days, > 0) before it [SHAPING_CLOCK_MAX_BEHIND_DAYS];
            a rig that was offline drains its outbox late, so this is wide.
        command_max_age_s: how long (seconds, > 0) after the broker took an operator's command
            the processor may still act on it [SHAPING_COMMAND_MAX_AGE_S].
        processor_defer_s: how long (seconds, 0-60) the processor may keep a mouse that only
            gained trials in memory before it writes its state [SHAPING_PROCESSOR_DEFER_S]; 0:
            written after every batch (services/processor/app.py, "Deferred writes").
        processor_fetch_wait_ms: how long (ms, 1-1500) the broker may hold the processor's
            fetch request open for data [SHAPING_PROCESSOR_FETCH_WAIT_MS]; a message of a
            partition the request left out waits up to this long (services/processor/
            fetching.py).
        welfare_policy: the lab's welfare policy file (YAML; docs/husbandry.md)
            [SHAPING_WELFARE_POLICY]; None: the built-in default policy. It is read and checked
            by :func:`shaping.services.bootstrap.welfare_policy`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True
    )

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "shaping"
    partitions: int = Field(default=4, ge=1)
    processor_id: str = "shaping-processor"
    projector_id: str = "projector"
    db_url: str = Field(default="sqlite:///shaping.sqlite", repr=False)
    data_dir: str = ".shaping"
    clock_max_ahead_s: float = Field(default=900.0, gt=0, allow_inf_nan=False)
    clock_max_behind_days: float = Field(default=366.0, gt=0, allow_inf_nan=False)
    command_max_age_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    processor_defer_s: float = Field(default=1.0, ge=0, le=60, allow_inf_nan=False)
    processor_fetch_wait_ms: int = Field(default=20, ge=1, le=1500)
    welfare_policy: str | None = None

    _kafka: KafkaConnection = PrivateAttr()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Options, then the environment, then the credentials file (SHAPING_CREDENTIALS_FILE).
        from_file = {
            name.removeprefix(ENV_PREFIX).lower(): value
            for name, value in credentials_file().items()
            if name.removeprefix(ENV_PREFIX).lower() in cls.model_fields
        }
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, from_file),
            dotenv_settings,
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _database_password(cls, data: Any) -> Any:
        path = setting(DB_PASSWORD_FILE)
        if not path or not isinstance(data, dict):
            return data
        password = read_private_file(path, DB_PASSWORD_FILE).strip()
        if not password:
            raise SettingsError(DB_PASSWORD_FILE, f"{path} is empty", "db_url")
        url = data.get("db_url")
        if isinstance(url, str) and url.strip():
            return {**data, "db_url": with_password(url, password)}
        return data

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
            self._kafka = _kafka_connection(self.bootstrap)
        except ValidationError as exc:
            raise _kafka_error(exc) from None

    @property
    def kafka(self) -> KafkaConnection:
        """The validated connection to the brokers (:attr:`bootstrap` and ``SHAPING_KAFKA_*``),
        for :mod:`shaping.services.adapters.kafka`."""
        return self._kafka

    @property
    def db_url_shown(self) -> str:
        """:attr:`db_url` with its password masked (``***``), for messages and logs."""
        return shown_url(self.db_url)

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


def read_private_file(path: str, variable: str) -> str:
    """The text of the file ``path`` (named by the variable ``variable``), if only its owner may
    read it.

    Raises:
        SettingsError: naming ``variable``, when the file is missing, not a regular file,
            readable or writable by its group or others (with the ``chmod`` that fixes it), or
            unreadable.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise SettingsError(variable, f"{path} is not a regular file")
        if mode & 0o077:
            raise SettingsError(
                variable,
                f"{path} may be read by others (mode {mode & 0o777:o}); "
                f"a file of secrets must be private: `chmod 600 {path}`",
            )
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise SettingsError(variable, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(variable, f"{path} is not UTF-8 text") from None


def credentials_file(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``SHAPING_*`` variables of the file named by ``SHAPING_CREDENTIALS_FILE`` (none when
    it is not set).

    Raises:
        SettingsError: naming ``SHAPING_CREDENTIALS_FILE``: the file is not private (see
            :func:`read_private_file`), or a line is not ``SHAPING_NAME=value`` (the message
            gives the line's number, never its value).
    """
    environ = os.environ if environ is None else environ
    path = environ.get(CREDENTIALS_FILE)
    if not path:
        return {}
    values: dict[str, str] = {}
    for number, raw in enumerate(read_private_file(path, CREDENTIALS_FILE).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _CREDENTIAL_LINE.fullmatch(line)
        value = _unquote(found.group(2)) if found else None
        if found is None or value is None:
            raise SettingsError(
                CREDENTIALS_FILE,
                f"{path} line {number}: expected SHAPING_NAME=value (a plain, 'single' or "
                '"double" quoted value without $, ` or \\)',
            )
        if found.group(1) == CREDENTIALS_FILE:
            raise SettingsError(
                CREDENTIALS_FILE, f"{path} line {number}: a credentials file cannot name another"
            )
        values[found.group(1)] = value
    return values


def _unquote(value: str) -> str | None:
    """The value of an env-file assignment as a shell would read it, or None for what this
    reader does not take (expansions, escapes, several words)."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        inner = value[1:-1]
        return None if "'" in inner else inner
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return None if any(c in inner for c in '"$`\\') else inner
    return value if _PLAIN_VALUE.fullmatch(value) else None


def setting(name: str) -> str | None:
    """The value of the variable ``name``: the environment's, else the credentials file's."""
    if name in os.environ:
        return os.environ[name]
    return credentials_file().get(name)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` for its user, unless it has a password already, is not a URL
    SQLAlchemy can read (the command that opens it says so), or is SQLite's."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.get_backend_name() == "sqlite" or parsed.password is not None:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """``url`` with its password masked, for people."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _kafka_connection(bootstrap: str) -> KafkaConnection:
    """The connection to ``bootstrap``: ``SHAPING_KAFKA_*`` from the environment, else from the
    credentials file (its password file read and checked here, as the connection would)."""
    from_file = credentials_file()
    given: dict[str, Any] = {}
    for name in KafkaConnection.model_fields:
        variable = f"SHAPING_KAFKA_{name.upper()}"
        if name != "bootstrap" and variable in from_file and variable not in os.environ:
            given[name] = from_file[variable]
    password_set = {KAFKA_PASSWORD_FILE, "SHAPING_KAFKA_SASL_PASSWORD"} & set(os.environ)
    if KAFKA_PASSWORD_FILE in from_file and not password_set and "sasl_password" not in given:
        path = from_file[KAFKA_PASSWORD_FILE]
        given["sasl_password"] = read_private_file(path, KAFKA_PASSWORD_FILE).strip()
    if not given:
        return KafkaConnection.of(bootstrap)
    return KafkaConnection(SHAPING_BOOTSTRAP=bootstrap, **given)  # type: ignore[call-arg]


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


__all__ = [
    "CREDENTIALS_FILE",
    "DB_PASSWORD_FILE",
    "OPTIONS",
    "Settings",
    "SettingsError",
    "credentials_file",
    "read_private_file",
    "setting",
    "shown_url",
    "with_password",
]
