"""Kafka record headers computed from the encoded bytes (schemas/headers.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shaping.schemas.codec import default_codec, load_schema_versions
from shaping.schemas.headers import (
    CONTENT_TYPE,
    H_CONTENT_TYPE,
    H_EVENT_TYPE,
    H_FINGERPRINT,
    H_SCHEMA_VERSION,
    header_text,
    headers_for,
)
from tests.support.story import enrolled, session, trials


def test_an_encoded_event_gets_its_type_version_fingerprint_and_content_type() -> None:
    codec = default_codec()
    for event in [enrolled("M1"), *session("M1", "M1-s1", trials(correct=2))]:
        value = codec.encode(event)
        headers = headers_for(value)
        assert [name for name, _ in headers] == [
            H_CONTENT_TYPE,
            H_EVENT_TYPE,
            H_SCHEMA_VERSION,
            H_FINGERPRINT,
        ]
        text = header_text(headers)
        newest = codec.newest(event.event_type)
        assert text == {
            "content-type": CONTENT_TYPE,
            "shaping-event-type": event.event_type,
            "shaping-schema-version": str(newest.version),
            "shaping-schema-fingerprint": newest.fingerprint.hex(),
        }
        assert all(isinstance(v, bytes) for _, v in headers)


def test_every_committed_schema_version_is_named_by_its_fingerprint() -> None:
    for version in load_schema_versions():
        value = b"\xc3\x01" + version.fingerprint + b"\x00"
        text = header_text(headers_for(value))
        assert text["shaping-event-type"] == version.event_type
        assert text["shaping-schema-version"] == str(version.version)


def test_an_unknown_fingerprint_keeps_only_what_the_bytes_prove() -> None:
    value = b"\xc3\x01" + bytes(range(8)) + b"body"
    assert header_text(headers_for(value)) == {
        "content-type": CONTENT_TYPE,
        "shaping-schema-fingerprint": "0001020304050607",
    }


def test_bytes_that_are_not_a_shaping_message_get_no_headers() -> None:
    assert headers_for(None) == []
    assert headers_for(b"") == []
    assert headers_for(b"\xc3\x01short") == []
    assert headers_for(b'{"json": true}') == []


@given(st.binary(max_size=64))
def test_headers_for_never_raises(value: bytes) -> None:
    headers = headers_for(value)
    assert all(isinstance(n, str) and isinstance(v, bytes) for n, v in headers)


def test_header_text_tolerates_missing_and_undecodable_values() -> None:
    assert header_text([("a", None), ("b", b"\xff"), ("c", b"ok")]) == {
        "a": "",
        "b": "\ufffd",
        "c": "ok",
    }
    assert header_text(None) == {}
