"""Where the curriculum tools read mice and write events: the status tables and Kafka.

Imported only by the commands that need them (SQLAlchemy and kafka-python stay out of the
other commands).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import CurriculumPublished, Event
from shaping.schemas.headers import headers_for
from shaping.services.curricula.errors import MigrationError
from shaping.services.curricula.migrate import MouseOnCurriculum

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


def publish(bootstrap: str, topic: str, events: Sequence[Event]) -> None:
    """Writes events to a topic, keyed by their ``mouse_id``, in order, and waits for every
    ack; a CurriculumPublished is written to every partition.

    Raises:
        MigrationError: when Kafka cannot be reached or a write fails.
    """
    from kafka.errors import KafkaError

    from shaping.services.adapters.kafka import producer as kafka_producer

    codec = default_codec()
    try:
        producer = kafka_producer(
            bootstrap,
            "shaping-curriculum",
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        raise MigrationError(f"no Kafka broker answered at {bootstrap}: {exc}") from exc
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
