"""An in-process, append-only event log with Kafka's shape (topics, offsets, keys, bytes).

The embedded runner publishes the same wire bytes a rig would send to Kafka, so the codec,
the processor step and the projector run exactly as they do on the real broker. The log can
be saved as JSON Lines (the bytes in base64, plus the decoded event for people) and loaded
back to replay it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import Event


@dataclass(frozen=True)
class LogRecord:
    """One message of the log."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class InProcessLog:
    """Topics of one partition each, kept in memory in append order."""

    def __init__(self) -> None:
        self._topics: dict[str, list[LogRecord]] = {}
        self._order: list[LogRecord] = []

    def append(self, topic: str, key: bytes | None, value: bytes) -> LogRecord:
        """Appends a message and returns it with its offset."""
        records = self._topics.setdefault(topic, [])
        record = LogRecord(topic, 0, len(records), key, value)
        records.append(record)
        self._order.append(record)
        return record

    def read(self, topic: str, start: int = 0) -> list[LogRecord]:
        """Messages of a topic from offset ``start``."""
        return self._topics.get(topic, [])[start:]

    def __len__(self) -> int:
        return len(self._order)

    def records(self) -> list[LogRecord]:
        """Every message, in append order."""
        return list(self._order)

    def since(self, start: int) -> list[LogRecord]:
        """The messages from position ``start`` of the append order on (``len(log)`` is the
        position of the next one)."""
        return self._order[start:]

    def save_jsonl(self, path: Path, codec: EventCodec) -> None:
        """Writes the log as JSON Lines (see :func:`jsonl_line`)."""
        with path.open("w", encoding="utf-8") as out:
            for record in self._order:
                out.write(
                    jsonl_line(
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        record.value,
                        codec,
                    )
                    + "\n"
                )

    @classmethod
    def load_jsonl(cls, path: Path) -> InProcessLog:
        """Reads a log written by :meth:`save_jsonl` (the bytes, not the decoded copy)."""
        log = cls()
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    topic, _, _, key, value = jsonl_fields(json.loads(line))
                    log.append(topic, key, value)
        return log


def plain_json(value: Any) -> Any:
    """``value`` as JSON-ready data: bytes as hex, dates as ISO 8601 text, anything else that
    JSON cannot hold as its text (never raises on what a log holds)."""
    return to_jsonable_python(value, bytes_mode="hex", inf_nan_mode="null", serialize_unknown=True)


def event_json(event: Event, exclude: set[str] | None = None) -> dict[str, Any]:
    """An event as JSON-ready data, as ``model_dump(mode="json")`` gives it, except that bytes
    (a dead letter's original key and value) are hex rather than UTF-8 text, which arbitrary
    bytes are not."""
    data: dict[str, Any] = plain_json(event.model_dump(mode="python", exclude=exclude))
    return data


def jsonl_line(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes, codec: EventCodec
) -> str:
    """One message as a line of the log file: its position, its key (UTF-8 text, and whole in
    base64 as ``key_b64`` when it is not UTF-8), its value in base64, and the decoded event for
    people (bytes in it as hex; ``{"undecodable": why}`` when it does not decode)."""
    event: Any
    try:
        event = event_json(codec.decode(value))
    except SerializationError as exc:
        event = {"undecodable": str(exc)}
    line: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "value_b64": base64.b64encode(value or b"").decode("ascii"),
        "event": event,
    }
    if key is not None and not _is_utf8(key):
        line["key_b64"] = base64.b64encode(key).decode("ascii")
    return json.dumps(line, sort_keys=True)


def jsonl_fields(item: dict[str, Any]) -> tuple[str, int, int, bytes | None, bytes]:
    """``(topic, partition, offset, key, value)`` of a line written by :func:`jsonl_line`.

    Raises:
        KeyError, TypeError, ValueError: when ``item`` is no such line.
    """
    topic, partition, offset = item["topic"], item["partition"], item["offset"]
    if not isinstance(topic, str) or not isinstance(partition, int):
        raise TypeError("topic must be text and partition a number")
    if not isinstance(offset, int) or partition < 0 or offset < 0:
        raise ValueError("offset must be a number, partition and offset at least 0")
    if item.get("key_b64") is not None:
        key: bytes | None = base64.b64decode(item["key_b64"], validate=True)
    else:
        key = item["key"].encode("utf-8") if item["key"] is not None else None
    return topic, partition, offset, key, base64.b64decode(item["value_b64"], validate=True)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
