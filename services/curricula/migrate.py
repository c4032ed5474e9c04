"""Moving mice between versions of a curriculum: the plan, and the events that carry it out.

A patch or minor version keeps every stage name, so each mouse keeps its stage. A major version
may rename or remove stages: the new file's ``migrations`` entry for the old version maps old
stage names to new ones; a stage that still exists maps to itself; a mouse on a stage that is
neither mapped nor kept cannot migrate (the plan says why, and no event is made for it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shaping.schemas.events import CurriculumPublished, MouseMigrated
from shaping.services.curricula.diff import Bump, diff
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import MigrationError
from shaping.services.curricula.model import semver


@dataclass(frozen=True)
class MouseOnCurriculum:
    """Where a mouse is now (from the status table)."""

    mouse_id: str
    curriculum_name: str
    curriculum_version: str
    stage: str


@dataclass(frozen=True)
class MigrationStep:
    """One mouse's move: its stage now and in the new version (None: it cannot move)."""

    mouse_id: str
    from_version: str
    to_version: str
    from_stage: str
    to_stage: str | None
    note: str

    @property
    def possible(self) -> bool:
        """Whether the mouse can move."""
        return self.to_stage is not None


def stage_map(old: CompiledCurriculum, new: CompiledCurriculum) -> dict[str, str | None]:
    """Each stage of ``old`` -> its stage in ``new`` (None when it has none)."""
    if old.name != new.name:
        raise MigrationError(f"{old.name} and {new.name} are different curricula")
    mapping: dict[str, str] = {}
    old_major = str(semver(old.version)[0])
    for migration in new.document.migrations:
        if migration.from_version in (old.version, old_major):
            mapping.update(migration.stages)
    return {
        stage: mapping.get(stage, stage if new.has_stage(stage) else None)
        for stage in old.stage_names
    }


def plan(
    old: CompiledCurriculum, new: CompiledCurriculum, mice: Iterable[MouseOnCurriculum]
) -> list[MigrationStep]:
    """Each mouse on ``old``'s version of the curriculum, and where it goes in ``new``.

    Raises:
        MigrationError: when the versions are not two versions of one curriculum, or the new
            one is not newer.
    """
    if semver(new.version) <= semver(old.version):
        raise MigrationError(f"{new.version} is not newer than {old.version}")
    mapping = stage_map(old, new)
    bump: Bump = diff(old, new).actual
    steps = []
    for mouse in mice:
        if (mouse.curriculum_name, mouse.curriculum_version) != (old.name, old.version):
            continue
        target = mapping.get(mouse.stage)
        if mouse.stage not in mapping:
            note = f"stage {mouse.stage!r} is not in {old.name} {old.version}"
        elif target is None:
            note = (
                f"{new.version} has no stage {mouse.stage!r} and no mapping for it: add it to "
                f"the migrations of {new.version}"
            )
        elif target != mouse.stage:
            note = f"{bump} version: stage mapping {mouse.stage} -> {target}"
        else:
            note = f"{bump} version: same stage"
        steps.append(
            MigrationStep(
                mouse.mouse_id,
                old.version,
                new.version,
                mouse.stage,
                target if mouse.stage in mapping else None,
                note,
            )
        )
    return steps


def migration_events(
    steps: Sequence[MigrationStep],
    new: CompiledCurriculum,
    at: datetime,
    by: str = "",
) -> list[MouseMigrated]:
    """MouseMigrated for every mouse that can move."""
    return [
        MouseMigrated(
            event_id=str(uuid.uuid4()),
            mouse_id=step.mouse_id,
            occurred_at=at,
            curriculum_name=new.name,
            from_version=step.from_version,
            to_version=step.to_version,
            from_stage=step.from_stage,
            to_stage=step.to_stage,
            content_hash=new.content_hash,
            reason=step.note,
            migrated_by=by,
        )
        for step in steps
        if step.to_stage is not None
    ]


def published_event(
    curriculum: CompiledCurriculum,
    previous: CompiledCurriculum | None,
    at: datetime,
    by: str = "",
    notes: str = "",
) -> CurriculumPublished:
    """The CurriculumPublished of a version, after checking its version bump.

    Raises:
        VersionBumpTooSmall: when the version number does not admit the changes since
            ``previous``.
    """
    import json

    bump = ""
    if previous is not None:
        changes = diff(previous, curriculum)
        changes.check()
        bump = changes.actual
    return CurriculumPublished(
        event_id=str(uuid.uuid4()),
        mouse_id=f"curriculum:{curriculum.name}",
        occurred_at=at,
        curriculum_name=curriculum.name,
        curriculum_version=curriculum.version,
        content_hash=curriculum.content_hash,
        content=json.dumps(curriculum.content(), sort_keys=True, separators=(",", ":")),
        previous_version=previous.version if previous is not None else None,
        bump=bump,
        published_by=by,
        notes=notes,
    )
