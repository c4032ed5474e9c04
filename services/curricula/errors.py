"""Errors of the curricula package: loading, validating, importing and rendering curricula."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shaping.services.domain.errors import CurriculumError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a curriculum, located as precisely as the source allows.

    Attributes:
        message: what is wrong, in words.
        file: the file it was read from, if any.
        line: 1-based line in that file, where the source format has lines (YAML).
        stage: the stage concerned, if any.
        rule: the rule (or policy) concerned, if any.
        severity: ``error`` rejects the curriculum; ``warning`` is only reported.
    """

    message: str
    file: str | None = None
    line: int | None = None
    stage: str | None = None
    rule: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file or "<curriculum>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [where]
        if self.stage is not None:
            parts.append(f"stage {self.stage!r}")
        if self.rule is not None:
            parts.append(f"rule {self.rule!r}")
        prefix = ", ".join(parts)
        label = "" if self.severity == "error" else "warning: "
        return f"{prefix}: {label}{self.message}"


class CurriculumInvalid(CurriculumError):
    """A curriculum was rejected; ``problems`` says where and why (errors first)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.severity != "error")
        errors = [p for p in self.problems if p.severity == "error"]
        lines = "\n".join(f"  {p}" for p in errors)
        super().__init__(f"curriculum rejected ({len(errors)} problem(s)):\n{lines}")


class RuleSyntaxError(CurriculumError):
    """A rule expression is not valid in the rule language.

    Attributes:
        message: what is wrong.
        column: 1-based column in the expression, when known.
    """

    def __init__(self, message: str, column: int | None = None) -> None:
        self.message = message
        self.column = column
        where = f" (column {column})" if column is not None else ""
        super().__init__(f"{message}{where}")


class ImportFailed(CurriculumError):
    """A foreign curriculum (AIND, mtrain) could not be converted; ``problems`` says why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"import failed ({len(self.problems)} problem(s)):\n{lines}")


class RenderError(CurriculumError):
    """A diagram could not be drawn (for instance graphviz's ``dot`` is missing)."""


class VersionBumpTooSmall(CurriculumError):
    """A new curriculum version changes more than its version number admits."""


class MigrationError(CurriculumError):
    """Mice cannot be moved between two curriculum versions as asked."""


class PublishError(CurriculumError):
    """A curriculum version cannot be published, or the published versions cannot be read."""
