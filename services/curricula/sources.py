"""Curricula from any supported source: Shaping's own files, AIND JSON, mtrain regimens.

The command-line tools take a file and find out what it is, so ``shaping evaluate --curriculum
'Coupled Baiting_curriculum_v2.3_schema_v1.0.json'`` works on an AIND export directly: it is
converted and checked exactly as ``shaping curriculum import aind`` would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from shaping.services.curricula import aind, mtrain
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import CurriculumInvalid
from shaping.services.curricula.loader import load_curriculum, read_document
from shaping.services.curricula.validate import compile_curriculum

Kind = Literal["auto", "shaping", "aind", "mtrain"]


def detect(path: Path) -> Kind:
    """What a curriculum file is: ``shaping``, ``aind`` or ``mtrain``."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "shaping"  # the loader reports the error
        # AIND also publishes the JSON Schemas of its curricula; its importer says so.
        is_schema = isinstance(data, dict) and ("$defs" in data or "$schema" in data)
        return "aind" if aind.looks_like_aind(data) or is_schema else "shaping"
    try:
        data, _ = read_document(path)
    except CurriculumInvalid:
        return "shaping"
    return "mtrain" if mtrain.looks_like_mtrain(data) else "shaping"


def convert(path: Path, kind: Kind = "auto") -> dict[str, Any]:
    """A foreign curriculum file converted to a Shaping document (plain data)."""
    kind = detect(path) if kind == "auto" else kind
    if kind == "aind":
        return aind.convert_file(path)[0]
    if kind == "mtrain":
        return mtrain.convert_file(path)[0]
    data, _ = read_document(path)
    return dict(data)


def load_any(path: Path, kind: Kind = "auto") -> CompiledCurriculum:
    """Loads and checks a curriculum from a file of any supported kind.

    Raises:
        CurriculumInvalid: when the (converted) curriculum has errors.
        ImportFailed: when a foreign file cannot be converted.
    """
    kind = detect(path) if kind == "auto" else kind
    if kind == "shaping":
        return load_curriculum(path)
    return compile_curriculum(convert(path, kind), file=str(path))
