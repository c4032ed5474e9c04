"""The curricula a deployment knows: the shipped ones, plus a lab's own folder.

``default_catalog()`` is what the processor, the embedded runner and the demo use. A lab adds
its curricula (or new versions) by putting files in a folder named by ``SHAPING_CURRICULA_DIR``
(several folders separated by ``:``); every file is checked when the catalog loads, and one bad
file stops the service with every problem listed, rather than silently skipping mice.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.loader import SUFFIXES, check_file, curriculum_files, load_all
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain.curriculum import CurriculumCatalog

CURRICULA_DIR_ENV = "SHAPING_CURRICULA_DIR"


def shipped_files() -> list[Path]:
    """The curriculum files installed with Shaping (the ``curricula`` folder)."""
    root = resources.files("shaping.curricula")
    found: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append(entry)
            elif entry.name.lower().endswith(SUFFIXES):
                found.append(Path(str(entry)))
    return sorted(found)


def shipped_curricula() -> list[CompiledCurriculum]:
    """Every shipped curriculum, loaded and checked."""
    return load_all(shipped_files())


def extra_folders() -> list[Path]:
    """The folders named by ``SHAPING_CURRICULA_DIR``."""
    value = os.environ.get(CURRICULA_DIR_ENV, "")
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def compile_content(content: str) -> CompiledCurriculum:
    """Compiles a published curriculum's content (the JSON of a CurriculumPublished event).

    Raises:
        CurriculumInvalid: when it is not JSON or not a valid curriculum.
    """
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise CurriculumInvalid([Problem(f"published content is not JSON: {exc.msg}")]) from None
    return compile_curriculum(data, file="<published>")


def default_catalog(folders: list[Path] | None = None) -> CurriculumCatalog:
    """The shipped curricula plus those in ``folders`` (default: ``SHAPING_CURRICULA_DIR``).

    Raises:
        CurriculumInvalid: when any file is invalid or a folder does not exist.
    """
    catalog = CurriculumCatalog(shipped_curricula(), compiler=compile_content)
    for folder in extra_folders() if folders is None else folders:
        if not folder.is_dir():
            raise CurriculumInvalid(
                [Problem(f"curricula folder does not exist ({CURRICULA_DIR_ENV})", str(folder))]
            )
        for curriculum in load_all(curriculum_files(folder)):
            catalog.add(curriculum)
    return catalog


__all__ = ["CURRICULA_DIR_ENV", "check_file", "default_catalog", "shipped_curricula"]
