"""AIND's JSON Schemas give the types of the task parameters: the importer picks the schema a
curriculum follows, refuses parameters that do not fit it (file, stage and parameter named),
and records the types, which every later load, `validate`, `show` and per-mouse adjustments use.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from shaping.services.cli import app
from shaping.services.curricula.aind import convert_file
from shaping.services.curricula.errors import ImportFailed
from shaping.services.curricula.validate import check_curriculum, compile_curriculum
from shaping.services.domain.errors import CurriculumError
from tests.support.aind import AIND_CURRICULA

V23 = AIND_CURRICULA / "Coupled Baiting_curriculum_v2.3_schema_v1.0.json"
DYNAMIC = AIND_CURRICULA / "DynamicForagingCurriculum_v1.0.json"
DUMMY = AIND_CURRICULA / "DummyTaskCurriculum_v1.0.json"


def test_each_curriculum_gets_the_schema_of_its_task() -> None:
    document, warnings = convert_file(V23)
    schema = document["parameter_schema"]
    assert (schema["name"], schema["version"], schema["source"]) == (
        "DynamicForagingCurriculum",
        "1.0",
        "DynamicForagingCurriculum_v1.0.json",
    )
    assert schema["additional"] is False  # additionalProperties: false
    types = schema["types"]
    assert types["RewardFamily"] == {
        "type": "integer",
        "description": "Reward family",
        "required": True,
    }
    assert types["AdvancedBlockAuto"]["choices"] == ["off", "now", "once"]  # via $ref
    assert types["AutoReward"]["type"] == "boolean"
    assert types["BaseRewardSum"]["type"] == "number"
    assert "required" not in types["UncoupledReward"]  # has a default in the schema
    assert "training_stage" not in types and "description" not in types
    assert warnings == []

    dummy, _ = convert_file(AIND_CURRICULA / "Dummy task_curriculum_v0.2_schema_v1.0.json")
    assert dummy["parameter_schema"]["name"] == "DummyTaskCurriculum"
    assert dummy["parameter_schema"]["types"]["dummy_para_bool"]["type"] == "boolean"


def test_a_curriculum_of_an_unpublished_schema_version_imports_without_types() -> None:
    document, warnings = convert_file(
        AIND_CURRICULA / "Coupled Baiting_curriculum_v0.1_schema_v0.3.json"
    )
    assert "parameter_schema" not in document
    [warning] = warnings
    assert warning.severity == "warning"
    assert "no JSON Schema for AIND curriculum schema 0.3" in warning.message


def corrupted(folder: Path, with_schemas: bool = True) -> Path:
    """A copy of Coupled Baiting v2.3 with parameters that break the schema."""
    data: dict[str, Any] = json.loads(V23.read_text())
    stage1 = data["parameters"]["Stage 1"]
    stage1["BlockMin"] = "ten"  # integer
    stage1["AdvancedBlockAuto"] = "sometimes"  # enum off/now/once
    stage1["AutoReward"] = 1  # boolean, not a number
    stage1["BlockMinn"] = 5  # not in the schema, which allows no others
    del data["parameters"]["Stage 2"]["MaxTrial"]  # required
    path = folder / V23.name
    path.write_text(json.dumps(data, indent=2))
    if with_schemas:
        shutil.copy(DYNAMIC, folder)
        shutil.copy(DUMMY, folder)
    return path


def test_parameters_that_break_the_schema_are_refused_with_stage_and_parameter(
    tmp_path: Path,
) -> None:
    path = corrupted(tmp_path)
    with pytest.raises(ImportFailed) as caught:
        convert_file(path)
    problems = {
        (p.file, p.stage, p.message.split(" ")[1]): p.message for p in caught.value.problems
    }
    file = str(path)
    assert set(problems) == {
        (file, "Stage 1", "'BlockMin'"),
        (file, "Stage 1", "'AdvancedBlockAuto'"),
        (file, "Stage 1", "'AutoReward'"),
        (file, "Stage 1", "'BlockMinn'"),
        (file, "Stage 2", "'MaxTrial'"),
    }
    assert problems[(file, "Stage 1", "'BlockMin'")] == (
        "parameter 'BlockMin' is 'ten', but must be an integer "
        "(JSON Schema DynamicForagingCurriculum 1.0)"
    )
    assert "not one of ['off', 'now', 'once']" in problems[(file, "Stage 1", "'AdvancedBlockAuto'")]
    assert "must be true or false" in problems[(file, "Stage 1", "'AutoReward'")]
    assert (
        "is not a parameter of DynamicForagingCurriculum"
        in problems[(file, "Stage 1", "'BlockMinn'")]
    )
    assert (
        "is required by DynamicForagingCurriculum, but not set"
        in problems[(file, "Stage 2", "'MaxTrial'")]
    )


def test_the_schema_can_be_named_on_the_command_line(tmp_path: Path) -> None:
    path = corrupted(tmp_path, with_schemas=False)
    # Nothing beside it: imported without types (and said so).
    result = CliRunner().invoke(app, ["curriculum", "import", "aind", str(path)])
    assert result.exit_code == 0, result.output
    assert "parameter types are not checked" in result.output
    # Named: the mismatches are refused.
    result = CliRunner().invoke(
        app, ["curriculum", "import", "aind", str(path), "--schema", str(DYNAMIC)]
    )
    assert result.exit_code == 2
    assert "stage 'Stage 1': parameter 'BlockMin' is 'ten', but must be an integer" in (
        result.output
    )
    assert "Traceback" not in result.output


def test_the_recorded_types_are_checked_when_an_imported_file_is_edited(tmp_path: Path) -> None:
    document, _ = convert_file(V23)
    final = next(s for s in document["stages"] if s["name"] == "Stage final")
    final["parameters"]["MaxTime"] = 75.5  # an integer in the schema
    compiled, problems = check_curriculum(document, file="edited.yaml")
    assert compiled is None
    [problem] = [p for p in problems if p.severity == "error"]
    assert (problem.file, problem.stage) == ("edited.yaml", "Stage final")
    assert problem.message == "parameter 'MaxTime' is 75.5, but must be an integer"

    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = CliRunner().invoke(app, ["curriculum", "validate", str(path)])
    assert result.exit_code == 1
    assert "stage 'Stage final': parameter 'MaxTime' is 75.5, but must be an integer" in (
        result.output
    )
    final["parameters"]["MaxTime"] = 75
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = CliRunner().invoke(app, ["curriculum", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "parameters typed by DynamicForagingCurriculum 1.0" in result.output
    result = CliRunner().invoke(app, ["curriculum", "show", str(path), "--stage", "STAGE_FINAL"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["parameter_schema"]["name"] == "DynamicForagingCurriculum"
    assert shown["types"]["MaxTime"] == {
        "type": "integer",
        "required": True,
        "description": "Maximal session time (min)",
    }
    assert set(shown["types"]) == set(shown["parameters"])


def test_adjustments_are_checked_against_the_schema_types() -> None:
    document, _ = convert_file(V23)
    document["adjustable"] = {
        "MaxTrial": {"minimum": 100, "maximum": 2000},
        "AdvancedBlockAuto": {"choices": ["off", "now"]},
    }
    curriculum = compile_curriculum(document)
    curriculum.check_adjustment("Stage 1", "MaxTrial", 500)
    curriculum.check_adjustment("Stage 1", "AdvancedBlockAuto", "off")
    with pytest.raises(CurriculumError, match=r"MaxTrial is 500\.5, but must be an integer"):
        curriculum.check_adjustment("Stage 1", "MaxTrial", 500.5)
    with pytest.raises(CurriculumError, match="outside the allowed >= 100 and <= 2000"):
        curriculum.check_adjustment("Stage 1", "MaxTrial", 5000)

    # A limit the schema's type cannot take is an error of the curriculum itself.
    document["adjustable"]["AdvancedBlockAuto"] = {"choices": ["off", "now", "sometimes"]}
    compiled, problems = check_curriculum(document, file="c.yaml")
    assert compiled is None
    assert [p.message for p in problems if p.severity == "error"] == [
        "adjustable 'AdvancedBlockAuto': the allowed value is 'sometimes', not one of "
        "['off', 'now', 'once']"
    ]
