"""Where the conformance data (the "anchors") live: ``tests/data/anchors``, inside the repository.

The files are byte-identical copies of the reference data of the projects Shaping replaces
(ibllib, AIND auto-train, reach); ``tests/data/anchors/README.md`` says where each came from and
under which licence, and ``tests/data/anchors/SHA256SUMS`` holds their digests. Tests and
benchmarks read them through the constants here, so a fresh clone needs nothing beside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANCHORS = REPO / "tests" / "data" / "anchors"
IBL = ANCHORS / "ibl"
AIND = ANCHORS / "aind"
REACH = ANCHORS / "reach"
MANIFEST = ANCHORS / "SHA256SUMS"
README = ANCHORS / "README.md"
# The collection the copies were taken from, when it sits beside the repository.
SHARED = REPO.parent / "shared" / "anchors"
# The data folders copied; the collection's own README.md is replaced by ours.
FOLDERS = ("ibl", "aind", "reach")


def data_files(root: Path) -> list[str]:
    """Every file under ``root``'s data folders, as sorted POSIX paths relative to ``root``."""
    return sorted(
        path.relative_to(root).as_posix()
        for folder in FOLDERS
        for path in (root / folder).rglob("*")
        if path.is_file()
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_lines(root: Path = ANCHORS) -> list[str]:
    """``sha256sum``'s lines (digest, two spaces, relative path) for the data files."""
    return [f"{sha256(root / name)}  {name}" for name in data_files(root)]


def read_manifest(path: Path = MANIFEST) -> dict[str, str]:
    """The committed manifest: relative path -> sha256."""
    digests: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split("  ", 1)
            digests[name] = digest
    return digests
