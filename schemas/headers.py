"""Kafka record headers that describe a Shaping message without decoding it.

Every Shaping producer attaches the headers :func:`headers_for` computes from the encoded value,
so generic tools (kcat, Kafka Connect, a broker-side router) can filter and route by event type
without Avro. They are a convenience only: readers decode the value itself, whose fingerprint
names the writer schema, and the processor never looks at them (see ``schemas/README.md``).

Headers (values are UTF-8 text):

``content-type``                 ``application/vnd.shaping.avro-single-object``
``shaping-event-type``           the event's wire name, e.g. ``TrialCompleted``
``shaping-schema-version``       the writer schema's version, e.g. ``2``
``shaping-schema-fingerprint``   the 8 fingerprint bytes after ``C3 01``, as 16 hex digits
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

from shaping.schemas.codec import HEADER_LEN, MAGIC, load_schema_versions

CONTENT_TYPE = "application/vnd.shaping.avro-single-object"
"""Media type of a Shaping message value (Avro single-object encoding)."""

H_CONTENT_TYPE = "content-type"
H_EVENT_TYPE = "shaping-event-type"
H_SCHEMA_VERSION = "shaping-schema-version"
H_FINGERPRINT = "shaping-schema-fingerprint"

Headers = list[tuple[str, bytes]]
"""Kafka record headers as kafka-python and faust take them: (name, value) pairs."""


@cache
def _known_fingerprints() -> dict[bytes, tuple[str, int]]:
    """Event type and version of every committed schema, by its 8-byte fingerprint."""
    return {v.fingerprint: (v.event_type, v.version) for v in load_schema_versions()}


def headers_for(value: bytes | None) -> Headers:
    """The headers of a message whose value is ``value``, read from its first 10 bytes.

    Never raises:

    - a value with the ``C3 01`` marker and a committed schema's fingerprint gets all four
      headers;
    - one with the marker but an unknown fingerprint gets ``content-type`` and
      ``shaping-schema-fingerprint`` only;
    - anything else (no value, too short, no marker) gets no headers: it is not a Shaping
      message, and no header should claim it is.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        return []
    head = bytes(value[:HEADER_LEN])
    if len(head) < HEADER_LEN or head[:2] != MAGIC:
        return []
    fingerprint = head[2:HEADER_LEN]
    headers: Headers = [(H_CONTENT_TYPE, CONTENT_TYPE.encode("ascii"))]
    known = _known_fingerprints().get(fingerprint)
    if known is not None:
        event_type, version = known
        headers.append((H_EVENT_TYPE, event_type.encode("utf-8")))
        headers.append((H_SCHEMA_VERSION, str(version).encode("ascii")))
    headers.append((H_FINGERPRINT, fingerprint.hex().encode("ascii")))
    return headers


def header_text(
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> dict[str, str]:
    """Record headers as text, for display: the last value of each name, undecodable bytes
    replaced (``\\ufffd``), a header without a value as an empty string."""
    if headers is None:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, raw in pairs:
        out[str(name)] = "" if raw is None else bytes(raw).decode("utf-8", errors="replace")
    return out
