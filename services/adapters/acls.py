"""Who may do what on a secured Kafka cluster: the principals' roles and their ACLs.

A secured broker (``infra/kafka/kafka.sh up --secure``, see docs/security.md) authenticates
every client with SASL/SCRAM-SHA-512 over TLS and authorises every request with KRaft's
StandardAuthorizer, denying whatever no ACL allows. This module is the one table of what each
role is allowed (:func:`grants`, plain data), and the admin-side steps that put it on a
cluster: SCRAM credentials (:func:`upsert_users`) and ACLs (:func:`apply_acls`).

Roles (a principal is ``User:<name>``):

``admin``      super user (``super.users``); creates topics, manages users and ACLs; no ACLs
``processor``  reads ``events``, ``commands`` and ``curricula``; writes ``events`` (the answer to
               a command), ``accepted``, ``decisions``, ``assignments`` and ``dead_letter``;
               owns its consumer group and its changelog topics (``<processor_id>-*``)
``projector``  reads ``accepted``, ``decisions``, ``assignments``, ``dead_letter`` and
               ``curricula``; writes nothing
``operator``   writes its own ingress topic ``<prefix>.operator.<name>`` (its commands),
               ``curricula`` and ``alerts``; reads every topic of the deployment
``rig``        writes and reads its own ingress topic ``<prefix>.rig.<name>`` (its session
               events; its outbox reconciles against it); reads ``assignments`` and
               ``decisions``; consumer groups ``<rig name>.*`` only
``ingress``    the ingress gate: reads every ingress topic (prefixed ACLs ``<prefix>.rig.`` and
               ``<prefix>.operator.``) in its group ``<prefix>-ingress``; writes ``events``,
               ``commands`` and ``dead_letter``
``alerts``     the alerts service: reads ``events``, ``accepted``, ``decisions``,
               ``dead_letter`` and ``alerts`` in its group ``<prefix>-alerts``; writes ``alerts``
``notifier``   reads ``alerts`` in its group ``<prefix>-notifier``; writes nothing

The operator also writes ``alerts`` (``shaping alerts ack``: an acknowledgement is a fact about
a person, appended as it is; docs/alerts.md).

Rigs and operators never write ``events`` or ``commands``: the gate forwards what a principal
says as itself and dead-letters the rest (docs/security.md). Applying a principal's ACLs also
creates its ingress topic when it is missing (:func:`ensure_ingress_topics`), laid out like
``events``.

No role but ``admin`` may create, delete or alter a topic of the deployment, alter configs,
or touch the cluster resource. The operator's read side and the processor may describe topic
configs (``shaping topics create`` and the processor check the layout before they start).

Run as a script it applies the table to a running broker with the admin's credentials; the
broker script calls it so (``kafka.sh up --secure``, ``kafka.sh acls``)::

    python -m shaping.services.adapters.acls --secrets DIR --bootstrap 127.0.0.1:9092 \
        --prefix shaping --processor-id shaping-processor [--partitions N] [--upsert NAME ...]

``DIR`` holds ``principals`` (``name role`` per line), ``<name>.password`` per principal and
the CA (``ca.crt``, or ``--cafile``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import SecretStr

from shaping.schemas.topics import IngressKind, TopicNames, check_principal, ingress_spec
from shaping.services.adapters.errors import InfraError
from shaping.services.adapters.kafka import KafkaConnection, SaslMechanism, admin

if TYPE_CHECKING:
    from kafka.admin import ACL, KafkaAdminClient

Role = Literal[
    "admin", "processor", "projector", "operator", "rig", "ingress", "alerts", "notifier"
]
ROLES: tuple[Role, ...] = get_args(Role)

ResourceKind = Literal["topic", "group", "cluster"]
PatternKind = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS"]

MECHANISM: SaslMechanism = "SCRAM-SHA-512"
_TOPIC_ALREADY_EXISTS = 36
SCRAM_ITERATIONS = 8192

# What each non-admin role does with the deployment's topics, by kind ("curricula" is not a
# TopicKind: it is a named topic of its own).
_READS: Mapping[Role, tuple[str, ...]] = {
    "processor": ("events", "commands", "curricula"),
    # The alerts too: the status tables' ``alerts`` table (the digest and the web page).
    "projector": ("accepted", "decisions", "assignments", "dead_letter", "curricula", "alerts"),
    "operator": (
        "events",
        "commands",
        "accepted",
        "decisions",
        "assignments",
        "dead_letter",
        "curricula",
        "alerts",  # shaping alerts list (docs/alerts.md)
    ),
    # The follower reads the decision on a mouse's last session with its assignment.
    "rig": ("assignments", "decisions"),
    "ingress": (),
    # The alerts service watches what happened and restores the open alerts from its topic.
    "alerts": ("events", "accepted", "decisions", "dead_letter", "alerts"),
    "notifier": ("alerts",),
}
_WRITES: Mapping[Role, tuple[str, ...]] = {
    "processor": ("events", "accepted", "decisions", "assignments", "dead_letter"),
    "projector": (),
    # Commands go through the operator's ingress topic (below), never to ``commands``;
    # ``shaping alerts ack`` appends an AlertAcknowledged to ``alerts`` (docs/alerts.md).
    "operator": ("curricula", "alerts"),
    # Session events go through the rig's ingress topic (below), never to ``events``.
    "rig": (),
    "ingress": ("events", "commands", "dead_letter"),
    "alerts": ("alerts",),
    "notifier": (),
}
_INGRESS: Mapping[Role, tuple[IngressKind, tuple[Operation, ...]]] = {
    # The rig reads its own topic back: its drainer reconciles its outbox against it.
    "rig": ("rig", ("WRITE", "READ")),
    "operator": ("operator", ("WRITE",)),
}
"""The roles that own an ingress topic (named after the principal) and what they may do there."""
_DESCRIBES_CONFIGS: tuple[Role, ...] = ("processor", "operator")


@dataclass(frozen=True)
class Grant:
    """Operations one principal is allowed on one resource (or resource name prefix)."""

    resource: ResourceKind
    name: str
    pattern: PatternKind
    operations: tuple[Operation, ...]


def check_name(name: str) -> str:
    """A principal's name: letters, digits, ``.``, ``_`` and ``-``, at most 64 characters,
    starting with a letter or digit (it lands in file names, ACLs and the name of its ingress
    topic; :func:`shaping.schemas.topics.check_principal`)."""
    return check_principal(name)


def ingress_topic(role: Role, name: str, topics: TopicNames) -> str | None:
    """The ingress topic a principal writes (``<prefix>.rig.<name>`` for a rig,
    ``<prefix>.operator.<name>`` for an operator), None for the other roles."""
    owned = _INGRESS.get(role)
    return None if owned is None else topics.ingress(owned[0], name)


def rig_group_prefix(name: str) -> str:
    """The consumer groups a rig may use start with its name and a dot (``rig-1.``), so that
    ``rig-1`` cannot use ``rig-10``'s groups."""
    return f"{name}."


def _topic(topics: TopicNames, kind: str) -> str:
    if kind == "curricula":
        return topics.curricula
    return topics.of_kind(kind)  # type: ignore[arg-type]


def grants(role: Role, name: str, topics: TopicNames, processor_id: str) -> list[Grant]:
    """What principal ``User:<name>`` in ``role`` may do on a deployment's topics.

    Args:
        role: the principal's role; ``admin`` gets nothing here (it is a super user).
        name: the principal's name (a rig's name also prefixes its consumer groups).
        topics: the deployment's topic names.
        processor_id: the processor's faust app id: its consumer group and the prefix of its
            changelog topics.
    """
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role == "admin":
        return []
    found: dict[str, list[Operation]] = {}
    for kind in _READS[role]:
        found.setdefault(_topic(topics, kind), []).append("READ")
    for kind in _WRITES[role]:
        found.setdefault(_topic(topics, kind), []).append("WRITE")
    if role in _INGRESS:
        own = ingress_topic(role, name, topics)
        assert own is not None
        found.setdefault(own, []).extend(_INGRESS[role][1])
    if role in _DESCRIBES_CONFIGS:
        for topic in topics.all():
            found.setdefault(topic, []).append("DESCRIBE_CONFIGS")
    result = [
        Grant("topic", topic, "literal", tuple(dict.fromkeys(["DESCRIBE", *operations])))
        for topic, operations in found.items()
    ]
    if role == "ingress":
        # Every ingress topic, present and future, by prefix; its own consumer group.
        result += [
            Grant("topic", topics.ingress_prefix("rig"), "prefixed", ("READ", "DESCRIBE")),
            Grant("topic", topics.ingress_prefix("operator"), "prefixed", ("READ", "DESCRIBE")),
            Grant("group", topics.ingress_group, "literal", ("READ", "DESCRIBE")),
        ]
    if role == "processor":
        result += [
            # faust: the app id is the consumer group; tables' changelogs are
            # <processor_id>-<table>-changelog, which faust creates on its first start.
            Grant("group", processor_id, "literal", ("READ", "DESCRIBE")),
            Grant(
                "topic",
                f"{processor_id}-",
                "prefixed",
                ("READ", "WRITE", "CREATE", "DESCRIBE", "DESCRIBE_CONFIGS"),
            ),
        ]
    if role == "rig":
        result.append(Grant("group", rig_group_prefix(name), "prefixed", ("READ", "DESCRIBE")))
    if role in ("alerts", "notifier"):
        # Their consumer groups: <prefix>-alerts, <prefix>-notifier (services/alerts/runner.py,
        # services/notifier/runner.py).
        result.append(Grant("group", f"{topics.prefix}-{role}", "literal", ("READ", "DESCRIBE")))
    return result


def _acls(principal: str, grant: Grant) -> list[ACL]:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    pattern = ResourcePattern(
        ResourceType[grant.resource.upper()],
        grant.name,
        ACLResourcePatternType[grant.pattern.upper()],
    )
    return [
        ACL(f"User:{principal}", "*", ACLOperation[op], ACLPermissionType.ALLOW, pattern)
        for op in grant.operations
    ]


def acls_for(principals: Mapping[str, Role], topics: TopicNames, processor_id: str) -> list[ACL]:
    """Every ACL of ``principals`` (``{name: role}``), as kafka-python objects."""
    return [
        acl
        for name, role in principals.items()
        for grant in grants(role, name, topics, processor_id)
        for acl in _acls(name, grant)
    ]


def apply_acls(
    client: KafkaAdminClient,
    principals: Mapping[str, Role],
    topics: TopicNames,
    processor_id: str,
) -> int:
    """Creates the ACLs of ``principals`` (idempotent: the broker keeps one of each).

    Returns:
        How many ACLs were sent.

    Raises:
        InfraError: when the broker refused any of them.
    """
    acls = acls_for(principals, topics, processor_id)
    if not acls:
        return 0
    result = client.create_acls(acls)
    failed = result.get("failed") or []
    if failed:
        errors = sorted({getattr(error, "__name__", str(error)) for error in failed})
        raise InfraError(f"the broker refused {len(failed)} ACL(s): {', '.join(errors)}")
    return len(acls)


def ensure_ingress_topics(
    client: KafkaAdminClient,
    principals: Mapping[str, Role],
    topics: TopicNames,
    partitions: int,
) -> list[str]:
    """Creates the ingress topic of every rig and operator of ``principals`` that lacks one,
    laid out like ``events`` (:func:`shaping.schemas.topics.ingress_spec`): with the events
    topic's partition count when it exists, else ``partitions``. Existing topics are left as
    they are (a rig's records stay).

    Returns:
        The topics created.

    Raises:
        InfraError: the broker refused to create one.
    """
    wanted = [
        topic
        for name, role in principals.items()
        if (topic := ingress_topic(role, name, topics)) is not None
    ]
    existing = set(client.list_topics())
    missing = [topic for topic in wanted if topic not in existing]
    if not missing:
        return []
    if topics.events in existing:
        described = client.describe_topics([topics.events])
        count = len(described[0].get("partitions") or []) if described else 0
        partitions = count or partitions
    specs = [ingress_spec(topic, partitions) for topic in missing]
    request = {
        spec.name: {
            "num_partitions": spec.partitions,
            "replication_factor": 1,
            "configs": dict(spec.configs),
        }
        for spec in specs
    }
    response = client.create_topics(request, timeout_ms=15000, raise_errors=False)
    created = []
    for result in response.get("topics", []):
        code = result.get("error_code", 0)
        if code == 0:
            created.append(result["name"])
        elif code != _TOPIC_ALREADY_EXISTS:  # created meanwhile by another `kafka.sh acls`
            raise InfraError(
                f"cannot create the ingress topic {result['name']!r}: "
                f"{result.get('error_message') or f'error code {code}'}"
            )
    return created


def upsert_users(client: KafkaAdminClient, passwords: Mapping[str, str]) -> None:
    """Creates or replaces the SCRAM-SHA-512 credentials of ``passwords`` (``{name: password}``).

    Raises:
        InfraError: when the broker refused any of them.
    """
    if not passwords:
        return
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    mechanism = ScramMechanism.SCRAM_SHA_512
    alterations = [
        UserScramCredentialUpsertion(check_name(name), mechanism, password, SCRAM_ITERATIONS)
        for name, password in passwords.items()
    ]
    response = client.alter_user_scram_credentials(alterations)
    errors = [f"{user}: {error}" for user, error in response.items() if error is not None]
    missing = [name for name in passwords if name not in response]
    if missing:
        errors.append(f"no answer for {', '.join(missing)}")
    if errors:
        raise InfraError("the broker refused SCRAM credentials: " + "; ".join(errors))


def read_principals(path: Path) -> dict[str, Role]:
    """``{name: role}`` from a file of ``name role`` lines (``#`` comments allowed)."""
    principals: dict[str, Role] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2 or parts[1] not in ROLES:
            raise ValueError(f"{path}:{number}: expected 'name role' (role one of {ROLES})")
        principals[check_name(parts[0])] = parts[1]
    return principals


def read_secret(path: Path) -> str:
    """A secret from a file that only its owner may read."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ValueError(f"{path} is readable by others (mode {mode:o}); `chmod 600 {path}`")
    secret = path.read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def admin_connection(bootstrap: str, secrets: Path, cafile: Path) -> KafkaConnection:
    """The admin principal's connection (SASL_SSL, SCRAM-SHA-512) from a secrets directory."""
    return KafkaConnection(  # type: ignore[call-arg]
        SHAPING_BOOTSTRAP=bootstrap,
        security_protocol="SASL_SSL",
        sasl_mechanism=MECHANISM,
        sasl_username="admin",
        sasl_password=SecretStr(read_secret(secrets / "admin.password")),
        ssl_cafile=str(cafile),
    )


def _check_names(names: Iterable[str], principals: Mapping[str, Role]) -> None:
    unknown = [name for name in names if name not in principals]
    if unknown:
        raise ValueError(f"not in the principals file: {', '.join(unknown)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shaping.services.adapters.acls",
        description="Apply the principals' SCRAM credentials and ACLs to a secured broker.",
    )
    parser.add_argument("--secrets", type=Path, required=True, help="the secrets directory")
    parser.add_argument("--bootstrap", required=True, help="host:port of the SASL_SSL listener")
    parser.add_argument("--cafile", type=Path, help="the CA (PEM); default <secrets>/ca.crt")
    parser.add_argument("--prefix", default="shaping", help="the deployment's topic prefix")
    parser.add_argument("--processor-id", default="shaping-processor", help="faust app id")
    parser.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="partitions of a new ingress topic when the events topic does not exist yet",
    )
    parser.add_argument(
        "--upsert",
        nargs="*",
        default=[],
        metavar="NAME",
        help="(re)write these principals' SCRAM credentials from <secrets>/<name>.password",
    )
    parser.add_argument(
        "--rotate",
        metavar="NAME",
        help="set NAME's password to <secrets>/<name>.password.new, then move that file over "
        "<name>.password (the admin's connection uses the old one)",
    )
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error(f"--partitions must be at least 1, not {args.partitions}")
    try:
        principals = read_principals(args.secrets / "principals")
        _check_names([*args.upsert, *([args.rotate] if args.rotate else [])], principals)
        passwords = {name: read_secret(args.secrets / f"{name}.password") for name in args.upsert}
        if args.rotate:
            passwords[args.rotate] = read_secret(args.secrets / f"{args.rotate}.password.new")
        connection = admin_connection(
            args.bootstrap, args.secrets, args.cafile or args.secrets / "ca.crt"
        )
        topics = TopicNames.with_prefix(args.prefix)
        client = admin(connection, "shaping-acls", request_timeout_ms=15000)
        try:
            upsert_users(client, passwords)
            count = apply_acls(client, principals, topics, args.processor_id)
            created = ensure_ingress_topics(client, principals, topics, args.partitions)
        finally:
            client.close()
        if args.rotate:
            new_file = args.secrets / f"{args.rotate}.password.new"
            new_file.replace(args.secrets / f"{args.rotate}.password")
    except (OSError, ValueError, InfraError) as exc:
        print(f"acls: ERROR: {exc}", file=sys.stderr)
        return 1
    roles = ", ".join(f"{name} ({role})" for name, role in principals.items())
    print(f"acls: {count} ACLs for prefix {args.prefix!r}: {roles}")
    if passwords:
        print(f"acls: SCRAM credentials written for {', '.join(passwords)}")
    if created:
        print(f"acls: ingress topics created: {', '.join(created)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "MECHANISM",
    "ROLES",
    "Grant",
    "Role",
    "acls_for",
    "apply_acls",
    "check_name",
    "ensure_ingress_topics",
    "grants",
    "ingress_topic",
    "read_principals",
    "read_secret",
    "rig_group_prefix",
    "upsert_users",
]
