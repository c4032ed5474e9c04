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
``operator``   writes ``commands`` and ``curricula``; reads every topic of the deployment
``rig``        writes ``events``; reads ``assignments``; consumer groups ``<rig name>.*`` only

No role but ``admin`` may create, delete or alter a topic of the deployment, alter configs,
or touch the cluster resource. The operator's read side and the processor may describe topic
configs (``shaping topics create`` and the processor check the layout before they start).

Run as a script it applies the table to a running broker with the admin's credentials; the
broker script calls it so (``kafka.sh up --secure``, ``kafka.sh acls``)::

    python -m shaping.services.adapters.acls --secrets DIR --bootstrap 127.0.0.1:9092 \
        --prefix shaping --processor-id shaping-processor [--upsert NAME ...]

``DIR`` holds ``principals`` (``name role`` per line), ``<name>.password`` per principal and
the CA (``ca.crt``, or ``--cafile``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import SecretStr

from shaping.schemas.topics import TopicNames
from shaping.services.adapters.errors import InfraError
from shaping.services.adapters.kafka import KafkaConnection, SaslMechanism, admin

if TYPE_CHECKING:
    from kafka.admin import ACL, KafkaAdminClient

Role = Literal["admin", "processor", "projector", "operator", "rig"]
ROLES: tuple[Role, ...] = get_args(Role)

ResourceKind = Literal["topic", "group", "cluster"]
PatternKind = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS"]

MECHANISM: SaslMechanism = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# What each non-admin role does with the deployment's topics, by kind ("curricula" is not a
# TopicKind: it is a named topic of its own).
_READS: Mapping[Role, tuple[str, ...]] = {
    "processor": ("events", "commands", "curricula"),
    "projector": ("accepted", "decisions", "assignments", "dead_letter", "curricula"),
    "operator": (
        "events",
        "commands",
        "accepted",
        "decisions",
        "assignments",
        "dead_letter",
        "curricula",
    ),
    # The follower reads the decision on a mouse's last session with its assignment.
    "rig": ("assignments", "decisions"),
}
_WRITES: Mapping[Role, tuple[str, ...]] = {
    "processor": ("events", "accepted", "decisions", "assignments", "dead_letter"),
    "projector": (),
    "operator": ("commands", "curricula"),
    "rig": ("events",),
}
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
    starting with a letter or digit (it lands in file names and ACLs)."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"principal name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


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
    if role in _DESCRIBES_CONFIGS:
        for topic in topics.all():
            found.setdefault(topic, []).append("DESCRIBE_CONFIGS")
    result = [
        Grant("topic", topic, "literal", tuple(dict.fromkeys(["DESCRIBE", *operations])))
        for topic, operations in found.items()
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
    "grants",
    "read_principals",
    "read_secret",
    "rig_group_prefix",
    "upsert_users",
]
