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

from schemas.codec import EventCodec
from schemas.errors import SerializationError


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

    def save_jsonl(self, path: Path, codec: EventCodec) -> None:
        """Writes the log as JSON Lines: position, key, base64 value and the decoded event."""
        with path.open("w", encoding="utf-8") as out:
            for record in self._order:
                try:
                    event = codec.decode(record.value).model_dump(mode="json")
                except SerializationError as exc:
                    event = {"undecodable": str(exc)}
                line = {
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "key": record.key.decode("utf-8", "replace") if record.key else None,
                    "value_b64": base64.b64encode(record.value).decode("ascii"),
                    "event": event,
                }
                out.write(json.dumps(line, sort_keys=True) + "\n")

    @classmethod
    def load_jsonl(cls, path: Path) -> InProcessLog:
        """Reads a log written by :meth:`save_jsonl` (the bytes, not the decoded copy)."""
        log = cls()
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                item = json.loads(line)
                key = item["key"].encode("utf-8") if item["key"] is not None else None
                log.append(item["topic"], key, base64.b64decode(item["value_b64"]))
        return log
