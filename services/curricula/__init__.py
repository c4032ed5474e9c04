"""Curricula as validated, versioned data.

- :mod:`~services.curricula.model`: the file format (pydantic).
- :mod:`~services.curricula.rules`: the rule language (parsed with ``ast``, never ``eval``).
- :mod:`~services.curricula.validate`: every check, run when a curriculum is loaded.
- :mod:`~services.curricula.engine`: a loaded curriculum, the domain's ``CurriculumEngine``.
- :mod:`~services.curricula.loader` and :mod:`~services.curricula.catalog`: files and the
  curricula a deployment knows.
- :mod:`~services.curricula.aind`, :mod:`~services.curricula.mtrain`: importers.
- :mod:`~services.curricula.render`, :mod:`~services.curricula.diff`,
  :mod:`~services.curricula.evaluate`, :mod:`~services.curricula.migrate`: the operator tools
  behind ``shaping curriculum ...``, ``shaping evaluate`` and ``shaping migrate``.

The model, rule and engine modules are pure; reading files happens in the loader, the catalog
and the command line.
"""

from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.loader import load_curriculum
from shaping.services.curricula.validate import compile_curriculum

__all__ = [
    "CompiledCurriculum",
    "CurriculumInvalid",
    "Problem",
    "compile_curriculum",
    "default_catalog",
    "load_curriculum",
]
