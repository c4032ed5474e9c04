"""Bytes a hostile or broken producer could send: records encoded around the models'
validation, and Avro longs of any size."""

from __future__ import annotations

import io
from typing import Any

import fastavro

from shaping.schemas.codec import MAGIC, default_codec
from shaping.schemas.events import Event


def encode_unchecked(event: Event, **fields: Any) -> bytes:
    """``event`` in the wire format with ``fields`` replaced, without any validation (as a
    producer in another language could write it)."""
    codec = default_codec()
    record = {**event.model_dump(), **fields}
    schema = codec.newest(event.event_type)
    record["schema_version"] = schema.version
    buf = io.BytesIO()
    buf.write(MAGIC + schema.fingerprint)
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def avro_long(n: int) -> bytes:
    """The Avro encoding of a long: zig-zag, then a base-128 varint."""
    z = ((n << 1) ^ (n >> 63)) & ((1 << 64) - 1)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def with_occurred_at(event: Event, millis: int) -> bytes:
    """``event``'s bytes with ``occurred_at`` set to any number of milliseconds, even one no
    datetime can hold (past year 9999, before year 1)."""
    good = default_codec().encode(event)
    current = avro_long(int(event.occurred_at.timestamp() * 1000))
    assert good.count(current) >= 1
    return good.replace(current, avro_long(millis), 1)
