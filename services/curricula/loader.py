"""Reading curriculum files: YAML (with line numbers for every key) or JSON.

YAML is read with PyYAML's safe loader (no tags that build objects); anchors and merge keys
(``<<: *base``), as mtrain regimens use them, are resolved by the reader. A mapping that gives
the same key twice is an error here: the YAML reader itself would silently keep the last one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.validate import LineMap, check_curriculum
from shaping.services.domain.metrics import METRICS, MetricRegistry

SUFFIXES = (".yaml", ".yml", ".json")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML comes with shaping[services]
        raise CurriculumInvalid(
            [Problem("reading YAML needs PyYAML: pip install 'shaping[services]'")]
        ) from exc
    return yaml


def parse_text(text: str, file: str | None = None) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parses YAML (JSON is YAML too) and maps every key and item to its line.

    Returns:
        The document and a map from its paths (keys and list indexes) to 1-based lines.

    Raises:
        CurriculumInvalid: on a syntax error or a duplicate key, with its line.
    """
    yaml = _yaml()
    loader = yaml.SafeLoader(text)
    lines: dict[tuple[Any, ...], int] = {}
    problems: list[Problem] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk(node, (), lines, problems, file)
            if problems:
                raise CurriculumInvalid(problems)
            data = loader.construct_document(node)
        else:
            data = None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise CurriculumInvalid([Problem(f"not valid YAML: {reason}", file, line)]) from None
    finally:
        loader.dispose()
    return data, lines


def _walk(
    node: Any,
    path: tuple[Any, ...],
    lines: dict[tuple[Any, ...], int],
    problems: list[Problem],
    file: str | None,
) -> None:
    kind = type(node).__name__
    if kind == "MappingNode":
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys are resolved by the reader; own keys override them
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(f"key {key!r} is given twice (first on line {seen[key]})", file, line)
                )
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, file)
    elif kind == "SequenceNode":
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk(item, (*path, index), lines, problems, file)


def read_document(path: Path) -> tuple[Any, LineMap | None]:
    """Reads a curriculum file (``.yaml``, ``.yml`` or ``.json``) into plain data.

    Raises:
        CurriculumInvalid: when the file cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CurriculumInvalid([Problem(f"cannot read: {exc.strerror}", str(path))]) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CurriculumInvalid(
                [Problem(f"not valid JSON: {exc.msg}", str(path), exc.lineno)]
            ) from None
        try:  # JSON is YAML: the same reader gives line numbers
            _, lines = parse_text(text, str(path))
        except CurriculumInvalid:
            return data, None
        return data, lines
    return parse_text(text, str(path))


def check_file(
    path: Path, registry: MetricRegistry = METRICS
) -> tuple[CompiledCurriculum | None, list[Problem]]:
    """Reads and checks a curriculum file; returns it (None on errors) and every problem."""
    try:
        data, lines = read_document(path)
    except CurriculumInvalid as exc:
        return None, exc.problems
    return check_curriculum(data, file=str(path), lines=lines, registry=registry)


def load_curriculum(path: Path, registry: MetricRegistry = METRICS) -> CompiledCurriculum:
    """Reads, checks and compiles a curriculum file.

    Raises:
        CurriculumInvalid: with every problem (file, line, stage, rule) when it has errors.
    """
    compiled, problems = check_file(path, registry)
    if compiled is None:
        raise CurriculumInvalid(problems)
    return compiled


def curriculum_files(folder: Path) -> list[Path]:
    """Curriculum files in a folder and its subfolders, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())


def load_all(paths: Iterable[Path], registry: MetricRegistry = METRICS) -> list[CompiledCurriculum]:
    """Loads several files; every problem of every file is reported together.

    Raises:
        CurriculumInvalid: when any file has errors.
    """
    loaded, problems = [], []
    for path in paths:
        compiled, found = check_file(path, registry)
        problems.extend(found)
        if compiled is not None:
            loaded.append(compiled)
    if any(p.severity == "error" for p in problems):
        raise CurriculumInvalid(problems)
    return loaded
