"""Curriculum material shared by tests: an mtrain regimen, metric values handed straight to a
rule, and a major version of basic-shaping written into a lab's curriculum folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.scripts import REPO

REGIMEN = REPO / "tests" / "curricula" / "data" / "VisualBehavior_Task1A_v1.0.0.yml"
"""An mtrain regimen file, the input of ``shaping curriculum import mtrain``."""
BASIC_SHAPING = REPO / "curricula" / "basic-shaping.yaml"


class FakeMetrics:
    """Metric values given directly: counters, trial windows and session series."""

    def __init__(
        self,
        counters: Mapping[str, float | None] | None = None,
        series: Mapping[str, Sequence[float | None]] | None = None,
        windows: Mapping[tuple[str, int], float | None] | None = None,
    ) -> None:
        self.counters = dict(counters or {})
        self.sessions = {k: list(v) for k, v in (series or {}).items()}
        self.windows = dict(windows or {})

    def value(self, metric: str, window: int | None = None) -> float | None:
        if window is not None:
            return self.windows.get((metric, window))
        if metric in self.counters:
            return self.counters[metric]
        values = self.sessions.get(metric, [])
        return values[-1] if values else None

    def series(self, metric: str) -> Sequence[float | None]:
        return self.sessions.get(metric, [])


def major_version(folder: Path) -> Path:
    """basic-shaping 2.0.0 in a lab's folder: a major version that renames s2_training (no
    mouse can run the 0.1.0 stages' sessions on it)."""
    folder.mkdir(parents=True, exist_ok=True)
    content = BASIC_SHAPING.read_text()
    assert "version: 0.1.0\n" in content and "stages:\n  - name: s1_habituation" in content
    (folder / "basic-shaping-2.yaml").write_text(
        content.replace("version: 0.1.0\n", "version: 2.0.0\n")
        .replace("s2_training", "s2_practice")
        .replace(
            "stages:\n  - name: s1_habituation",
            "migrations:\n  - from_version: '0'\n    stages: {s2_training: s2_practice}\n"
            "    description: s2 renamed\n\nstages:\n  - name: s1_habituation",
        )
    )
    return folder
