"""Which version bump a change needs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shaping.services.curricula.diff import diff, version_bump
from shaping.services.curricula.errors import VersionBumpTooSmall
from shaping.services.curricula.validate import compile_curriculum
from tests.support.aind import v01_document, v02_document


def compiled(document: dict[str, Any], version: str) -> Any:
    document = copy.deepcopy(document)
    document["version"] = version
    return compile_curriculum(document)


def stage(document: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in document["stages"] if s["name"] == name)


def test_aind_v0_1_to_v0_2_is_a_threshold_change_so_a_minor_bump() -> None:
    result = diff(compiled(v01_document(), "0.1.0"), compiled(v02_document(), "0.2.0"))
    assert result.required == "minor" and result.actual == "minor"
    result.check()
    assert [c.where for c in result.changes if c.bump == "minor"] == [
        "stage Stage final, rule progress_to_graduated"
    ]


@pytest.mark.parametrize(
    ("edit", "needs"),
    [
        (lambda d: stage(d, "Stage 2")["parameters"].update(BlockMax=50), "minor"),
        (lambda d: stage(d, "Stage 2").update(description="Phase C, revised"), "patch"),
        (lambda d: stage(d, "Stage 2")["rules"].reverse(), "major"),
        (lambda d: stage(d, "Stage 2")["rules"].pop(), "major"),
        (lambda d: stage(d, "Stage 3")["rules"][1].update(to="Stage 1"), "major"),
        (
            lambda d: stage(d, "Stage 3")["rules"][0].update(
                when="finished_trials[-1] >= 400 or foraging_efficiency[-1] >= 0.7"
            ),
            "major",
        ),
        (
            lambda d: stage(d, "Stage 3")["rules"][0].update(
                when="finished_trials[-1] >= 450 and foraging_efficiency[-1] >= 0.72"
            ),
            "minor",
        ),
        (lambda d: d.update(description="other words"), "patch"),
        (lambda d: None, "none"),
    ],
)
def test_the_bump_each_change_needs(edit: Any, needs: str) -> None:
    new = copy.deepcopy(v01_document())
    edit(new)
    assert diff(compiled(v01_document(), "0.1.0"), compiled(new, "0.1.1")).required == needs


def test_a_too_small_bump_is_refused() -> None:
    new = copy.deepcopy(v01_document())
    stage(new, "Stage 2")["rules"].pop()
    with pytest.raises(VersionBumpTooSmall, match="is a minor bump, but the changes need a major"):
        diff(compiled(v01_document(), "0.1.0"), compiled(new, "0.2.0")).check()
    with pytest.raises(VersionBumpTooSmall, match="is a none bump"):
        diff(compiled(v01_document(), "0.1.0"), compiled(new, "0.1.0")).check()
    diff(compiled(v01_document(), "0.1.0"), compiled(new, "1.0.0")).check()


def test_version_bumps() -> None:
    assert version_bump("1.2.3", "1.2.4") == "patch"
    assert version_bump("1.2.3", "1.3.0") == "minor"
    assert version_bump("1.2.3", "2.0.0") == "major"
    assert version_bump("1.2.3", "1.2.3") == "none"
    assert version_bump("1.2.3", "1.2.2") == "none"
