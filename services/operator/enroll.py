"""``shaping enroll``: put a mouse on a curriculum by publishing a MouseEnrolled event.

The event goes to the events topic, keyed by the mouse id, through an idempotent kafka-python
producer with ``acks=all`` (a retried send is written once), and the command returns only once
the broker has acknowledged it. The processor then issues the mouse's first assignment.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import UTC, datetime

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import MouseEnrolled
from shaping.schemas.headers import headers_for
from shaping.services.operator.errors import OperatorError

SEND_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(choices)}"


def build_enrollment(
    mouse_id: str,
    curriculum: str,
    enrolled_by: str,
    start_stage: str | None = None,
    notes: str = "",
    rig_id: str | None = None,
    occurred_at: datetime | None = None,
    known_curricula: Sequence[str] | None = None,
) -> MouseEnrolled:
    """The MouseEnrolled event, after checking what can be checked here.

    The processor is the judge of curricula and stages: an enrolment it cannot honour becomes
    an EventRejected on the dead-letter topic. When the caller knows the curricula
    (``known_curricula``), an unknown name is refused here already, with suggestions.

    Raises:
        OperatorError: for an empty mouse id or curriculum, or a curriculum not in
            ``known_curricula``.
    """
    if not mouse_id.strip():
        raise OperatorError("the mouse id must not be empty")
    if not curriculum.strip():
        raise OperatorError("the curriculum name must not be empty")
    if known_curricula is not None and curriculum not in known_curricula:
        names = sorted(known_curricula)
        raise OperatorError(f"unknown curriculum {curriculum!r}; {_suggest(curriculum, names)}")
    return MouseEnrolled(
        mouse_id=mouse_id,
        rig_id=rig_id,
        occurred_at=occurred_at or datetime.now(UTC),
        curriculum_name=curriculum,
        start_stage=start_stage,
        enrolled_by=enrolled_by,
        notes=notes,
    )


def publish_enrollment(bootstrap: str, topic: str, event: MouseEnrolled) -> tuple[int, int]:
    """Publishes the event and waits for the broker's acknowledgement.

    Returns:
        The (partition, offset) the event was written at.

    Raises:
        OperatorError: when no broker answers, the topic does not exist, or the write fails.
    """
    from kafka.errors import KafkaError, KafkaTimeoutError

    from shaping.services.adapters.kafka import producer as kafka_producer

    try:
        producer = kafka_producer(
            bootstrap,
            "shaping-enroll",
            max_block_ms=int(SEND_TIMEOUT_S * 1000),
            bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        )
    except KafkaError as exc:
        raise OperatorError(
            f"no Kafka broker answered at {bootstrap} within {CONNECT_TIMEOUT_S:g} s; start one"
            " (`make kafka-up`) or pass --bootstrap"
        ) from exc
    try:
        value = default_codec().encode(event)
        future = producer.send(
            topic, key=encode_key(event.mouse_id), value=value, headers=headers_for(value)
        )
        metadata = future.get(timeout=SEND_TIMEOUT_S)
    except KafkaTimeoutError as exc:
        raise OperatorError(
            f"could not write to topic {topic!r} within {SEND_TIMEOUT_S:g} s: does it exist?"
            " (`shaping topics create`)"
        ) from exc
    except KafkaError as exc:
        raise OperatorError(f"Kafka refused the enrolment: {exc}") from exc
    finally:
        producer.close(timeout=10)
    return int(metadata.partition), int(metadata.offset)
