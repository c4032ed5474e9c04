"""Where the curriculum tools read mice and write to Kafka: the status tables, the events
topic (:func:`publish`) and the commands topic (:func:`send_migrations`).

A migration (``shaping migrate``) is one MigrateMouse command per mouse that can move, sent
and answered as a trainer's intervention is (:func:`~shaping.services.operator.interventions.
deliver`): the processor honours it by appending MouseMigrated to the events topic (then
issues the mouse's assignment on the new version), or refuses it on the dead-letter topic.

Imported only by the commands that need them (SQLAlchemy and kafka-python stay out of the
other commands).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.commands import MigrateMouse
from shaping.schemas.events import CurriculumPublished, Event
from shaping.schemas.headers import headers_for
from shaping.services.curricula.errors import MigrationError
from shaping.services.curricula.migrate import MigrationStep, MouseOnCurriculum
from shaping.services.operator.interventions import DEFAULT_WAIT_S

if TYPE_CHECKING:
    from shaping.services.adapters.kafka import KafkaConnection
    from shaping.services.adapters.settings import Settings
    from shaping.services.curricula.engine import CompiledCurriculum

SEND_TIMEOUT_S = 30.0


def mice_on(db_url: str, curriculum: str) -> list[MouseOnCurriculum]:
    """Every mouse on a curriculum, from the projector's ``mouse_status`` table.

    Raises:
        MigrationError: when the database cannot be read.
    """
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import SQLAlchemyError

    from shaping.services.projector.tables import mouse_status

    try:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    mouse_status.c.mouse_id,
                    mouse_status.c.curriculum_name,
                    mouse_status.c.curriculum_version,
                    mouse_status.c.stage,
                )
                .where(mouse_status.c.curriculum_name == curriculum)
                .order_by(mouse_status.c.mouse_id)
            ).all()
        engine.dispose()
    except SQLAlchemyError as exc:
        raise MigrationError(f"cannot read mouse_status from {db_url}: {exc}") from exc
    return [
        MouseOnCurriculum(r.mouse_id, r.curriculum_name, r.curriculum_version, r.stage)
        for r in rows
        if r.stage is not None and r.curriculum_version is not None
    ]


def publish(
    connection: KafkaConnection | str, topic: str, events: Sequence[Event], codec: EventCodec
) -> None:
    """Writes events to a topic, keyed by their ``mouse_id``, in order, and waits for every
    ack; a CurriculumPublished is written to every partition.

    Args:
        connection: the brokers (``Settings.kafka``, or just their addresses).
        topic: where to write.
        events: what to write, in order.
        codec: encodes them.

    Raises:
        MigrationError: when Kafka cannot be reached or a write fails.
    """
    from kafka.errors import KafkaError

    from shaping.services.adapters.kafka import producer as kafka_producer

    try:
        producer = kafka_producer(
            connection,
            "shaping-curriculum",
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        where = connection if isinstance(connection, str) else connection.bootstrap
        raise MigrationError(f"no Kafka broker answered at {where}: {exc}") from exc
    try:
        partitions = sorted(producer.partitions_for(topic) or [])
        if not partitions:
            raise MigrationError(f"topic {topic!r} does not exist (`shaping topics create`)")
        futures: list[Any] = []
        for event in events:
            key, value = encode_key(event.mouse_id), codec.encode(event)
            # A publication goes to every partition, ahead of what follows it there: whichever
            # worker owns a mouse's partition learns the version before that mouse's migration.
            targets = partitions if isinstance(event, CurriculumPublished) else [None]
            headers = headers_for(value)
            futures.extend(
                producer.send(topic, key=key, value=value, partition=p, headers=headers)
                for p in targets
            )
        for future in futures:
            future.get(timeout=SEND_TIMEOUT_S)
    except KafkaError as exc:
        raise MigrationError(f"could not write to {topic!r}: {exc}") from exc
    finally:
        producer.close(timeout=SEND_TIMEOUT_S)


def migration_commands(
    steps: Sequence[MigrationStep], new: CompiledCurriculum, at: datetime, by: str
) -> list[MigrateMouse]:
    """A MigrateMouse for every mouse of ``steps`` that can move to ``new``.

    Args:
        steps: the plan (:func:`shaping.services.curricula.migrate.plan`).
        new: the version the mice move to.
        at: when the migration was asked for.
        by: who asks (:func:`~shaping.services.operator.interventions.operator_name`).
    """
    return [
        MigrateMouse(
            mouse_id=step.mouse_id,
            requested_at=at,
            requested_by=by,
            curriculum_name=new.name,
            from_version=step.from_version,
            to_version=step.to_version,
            from_stage=step.from_stage,
            to_stage=step.to_stage,
            content_hash=new.content_hash,
            reason=step.note,
        )
        for step in steps
        if step.to_stage is not None
    ]


@dataclass(frozen=True)
class MigrationAnswer:
    """What became of one mouse's MigrateMouse.

    Attributes:
        command: the command as sent.
        lines: what to tell the operator, a line each (as for an intervention).
        refused: whether the processor refused it (the reason is in ``lines``).
    """

    command: MigrateMouse
    lines: list[str]
    refused: bool = False


def send_migrations(
    settings: Settings,
    commands: Sequence[MigrateMouse],
    codec: EventCodec,
    wait_s: float = DEFAULT_WAIT_S,
) -> Iterator[MigrationAnswer]:
    """Sends the commands to the commands topic one by one, each followed by a wait of up to
    ``wait_s`` for the processor's answer; yields each answer as it comes.

    Raises:
        MigrationError: a command did not reach Kafka (the ones before it were sent; the
            message says how many).
    """
    from shaping.services.operator.interventions import (
        DeliveryError,
        InterventionRefused,
        deliver,
    )

    for sent, command in enumerate(commands):
        try:
            delivery = deliver(settings, command, "migration", codec, wait_s)
        except InterventionRefused as exc:
            yield MigrationAnswer(command, [str(exc)], refused=True)
        except DeliveryError as exc:
            raise MigrationError(
                f"{exc} ({sent} of {len(commands)} migration(s) sent before)"
            ) from exc
        else:
            yield MigrationAnswer(command, delivery.report())
