"""schemas/README.md documents the wire format; its fingerprint table must be right."""

from __future__ import annotations

import re
from pathlib import Path

from shaping.schemas.codec import load_schema_versions

README = Path(__file__).parents[2] / "schemas" / "README.md"


def test_fingerprint_table_matches_the_schema_files() -> None:
    rows = re.findall(r"^\| (\w+) \| (\d+) \| `([0-9a-f]{16})` \|$", README.read_text(), re.M)
    documented = {(name, int(version)): fp for name, version, fp in rows}
    actual = {(v.event_type, v.version): v.fingerprint.hex() for v in load_schema_versions()}
    assert documented == actual


def test_fingerprint_is_the_avro_spec_rabin_fingerprint() -> None:
    """Recompute CRC-64-AVRO from the specification's algorithm, independently of fastavro."""
    import json

    from fastavro.schema import to_parsing_canonical_form

    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)

    def rabin(data: bytes) -> int:
        fp = empty
        for byte in data:
            fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
        return fp

    assert rabin(b'"int"').to_bytes(8, "little").hex() == "8f5c393f1ad57572"  # spec test vector
    for version in load_schema_versions():
        canonical = to_parsing_canonical_form(json.loads(json.dumps(version.raw)))
        assert rabin(canonical.encode()).to_bytes(8, "little") == version.fingerprint
