"""Checking a parsed YAML file against what it may hold, with the line at fault.

Shared by the lab's alert-rules file (:mod:`shaping.services.alerts.config`) and the
notifier's routing file (:mod:`shaping.services.notifier.routing`). The file is parsed by the
curricula loader's :func:`~shaping.services.curricula.loader.parse_text` (duplicate keys and
syntax errors are refused there, with their lines); :class:`Checker` gathers every problem of
the content, each located by its path in the document, so that one run names them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.loader import parse_text


class FileInvalid(ValueError):
    """A configuration file was rejected; ``problems`` says where and why."""

    def __init__(self, what: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{what} rejected ({len(self.problems)} problem(s)):\n{lines}")


def read_yaml(path: Path | None, text: str | None, file: str, what: str) -> tuple[Any, Checker]:
    """The document of ``text`` (or of the file at ``path``) and a checker for it.

    Raises:
        FileInvalid: the file cannot be read, is not YAML, or repeats a key.
    """
    if text is None:
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FileInvalid(what, [Problem(f"cannot read: {exc.strerror}", file)]) from None
    try:
        data, lines = parse_text(text, file)
    except CurriculumInvalid as exc:
        raise FileInvalid(what, exc.problems) from None
    return data, Checker(file, lines)


class Checker:
    """Collects the problems of one document (see the module)."""

    def __init__(self, file: str, lines: Mapping[tuple[Any, ...], int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def line(self, path: tuple[Any, ...]) -> int | None:
        """The line of ``path``, or of the nearest enclosing key that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def fail(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(Problem(message, self.file, self.line(path)))

    @staticmethod
    def where(path: tuple[Any, ...]) -> str:
        return ".".join(str(p) for p in path) or "the file"

    def mapping(
        self, value: Any, path: tuple[Any, ...], allowed: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """``value`` as a mapping; unknown keys (when ``allowed`` is given) are problems."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"{self.where(path)} must be a mapping of keys to values")
            return {}
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    self.fail(
                        (*path, key),
                        f"unknown key {key!r} in {self.where(path)} (known: {', '.join(allowed)})",
                    )
            return {k: v for k, v in value.items() if k in allowed}
        return dict(value)

    def number(
        self,
        section: Mapping[str, Any],
        path: tuple[Any, ...],
        key: str,
        default: float,
        low: float | None = None,
        high: float | None = None,
        whole: bool = False,
    ) -> float:
        """``section[key]`` as a number within ``[low, high]``; ``default`` when absent or
        wrong (a wrong one is a problem)."""
        if key not in section:
            return default
        value = section[key]
        where = self.where((*path, key))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail((*path, key), f"{where} must be a number, not {value!r}")
            return default
        if whole and value != int(value):
            self.fail((*path, key), f"{where} must be a whole number, not {value!r}")
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"at least {low:g}"
                if high is None
                else f"at most {high:g}"
                if low is None
                else f"between {low:g} and {high:g}"
            )
            self.fail((*path, key), f"{where} must be {bounds}, not {value!r}")
            return default
        return float(value)

    def choice(
        self,
        section: Mapping[str, Any],
        path: tuple[Any, ...],
        key: str,
        default: str,
        known: Sequence[str],
    ) -> str:
        """``section[key]``, one of ``known``; ``default`` when absent or unknown."""
        if key not in section:
            return default
        return self.one_of(section[key], (*path, key), known, default)

    def one_of(self, value: Any, path: tuple[Any, ...], known: Sequence[str], default: str) -> str:
        if value not in known:
            self.fail(
                path, f"{self.where(path)}: unknown value {value!r} (known: {', '.join(known)})"
            )
            return default
        return str(value)

    def text(self, section: Mapping[str, Any], path: tuple[Any, ...], key: str) -> str | None:
        """``section[key]`` as non-empty text, or None when absent or wrong."""
        if key not in section:
            return None
        value = section[key]
        if not isinstance(value, str) or not value.strip():
            self.fail((*path, key), f"{self.where((*path, key))} must be text, not {value!r}")
            return None
        return value.strip()

    def texts(self, value: Any, path: tuple[Any, ...]) -> list[str]:
        """A text or a list of texts."""
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(path, f"{self.where(path)} must be a name or a list of names, not {value!r}")
            return []
        return list(value)

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise FileInvalid(what, self.problems)
