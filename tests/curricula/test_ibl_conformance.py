"""Conformance with IBL's training status (ibllib ``brainbox.behavior.training``) on the real
trials of subject SWC_054 (tests/data/anchors/ibl), through Shaping's event path only.

Three sets of expectations from ``ibl_expected_statuses.json``, each checked through the batch
command (``shaping evaluate --trials``, which runs the embedded runtime) and through the stream
(a simulated rig publishing to the embedded runtime session by session; and one mouse through
real Kafka and the faust processor):

(a) the 7 upstream window cases (ibllib's ``TestTraining``): a fresh mouse is fed exactly the
    case's dates, with the case's ephys-rig dates and start delays as per-session facts; its
    decision on the last date sees exactly the case's window (docs/ibl.md says why);
(b) ``upstream_concatenate_test``: the pooled metrics of the 08-21/08-24/08-25 window;
(c) the day-by-day replay of all 11 dates under the no-regression rule.

Tolerances (docs/ibl.md): counts exact; perf_easy exact up to float rounding (1e-12); the
median reaction time within 1e-6 s; psychometric parameters within rtol 1e-3 (upstream uses
1e-5 on its own refit; both fit with psychofit's random restarts from seed 0). The counts of
values matched are printed (see them with -s or -rP).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    MouseEnrolled,
    StageTransitioned,
    TrainingWarning,
)
from shaping.services.cli import app
from shaping.services.operator.ibl_trials import (
    STATUS_COLUMNS,
    TRIAL_COLUMNS,
    TrialTableError,
    read_trials,
    session_events,
    short_protocol,
)
from tests.support.anchors import IBL
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processor import (  # noqa: F401 - fixtures
    ProcessorRunner,
    new_processor_id,
    of_mouse,
    outputs,
    processors,
    publisher,
)
from tests.support.scripts import REPO
from tests.support.wiring import embedded_runtime, sql_store

TRIALS = IBL / "trials_test_flat.csv"
EXPECTED = IBL / "ibl_expected_statuses.json"
BASIC = REPO / "curricula" / "basic-shaping.yaml"


def anchor(path: Path) -> Path:
    """An anchor file; a missing one fails the test (never skips it)."""
    if not path.is_file():
        pytest.fail(f"missing anchor {path}: the IBL conformance data is in tests/data/anchors")
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- reading trials


def test_the_anchor_trials_become_eleven_sessions_with_ibl_outcomes() -> None:
    sessions = read_trials(anchor(TRIALS))
    expected = json.loads(anchor(EXPECTED).read_text())["per_session_metrics_derived"]
    assert [s.session_date for s in sessions] == [e["date"] for e in expected]
    assert [s.task_protocol for s in sessions] == [e["task_protocol"] for e in expected]
    assert [len(s.trials) for s in sessions] == [e["n_trials"] for e in expected]
    _, rows = read_rows(TRIALS)
    first = sessions[0].trials[0]  # choice 1 (leftward), contrastLeft 1.0, rewarded
    assert (first.outcome, first.response_side, first.target_side) == ("correct", "left", "left")
    for session in sessions:
        own = [r for r in rows if r["session_date"] == session.session_date]
        assert sum(t.outcome == "correct" for t in session.trials) == sum(
            r["feedbackType"] == "1" for r in own
        )
        assert sum(t.outcome == "miss" for t in session.trials) == sum(
            r["choice"] == "0" for r in own
        )
        assert sum(t.response_side == "right" for t in session.trials) == sum(
            r["choice"] == "-1" for r in own
        )
        assert [t.stim_on_time for t in session.trials][:3] == [
            float(r["stimOn_times"]) if r["stimOn_times"] else None for r in own[:3]
        ]


def test_full_task_protocol_names_are_shortened_as_ibllib_does() -> None:
    assert short_protocol("_iblrig_tasks_trainingChoiceWorld6.4.2") == "training"
    assert short_protocol("_iblrig_tasks_biasedChoiceWorld6.4.2") == "biased"
    assert short_protocol("_iblrig_tasks_ephysChoiceWorld6.4.2") == "ephys"
    assert short_protocol("Habituation") == "habituation"


def test_several_subjects_sessions_and_per_session_facts_are_read(tmp_path: Path) -> None:
    columns, rows = read_rows(anchor(TRIALS))
    two = [r for r in rows if r["session_date"] in ("2020-08-21", "2020-08-24")]
    extra = []
    for subject in ("m1", "m2"):
        for row in two:
            ephys = subject == "m2" and row["session_date"] == "2020-08-24"
            extra.append(
                {**row, "subject": subject, "ephys_rig": str(ephys), "session_start_delay_s": "0"}
            )
    path = write_rows(
        tmp_path / "t.csv", [*columns, "subject", "ephys_rig", "session_start_delay_s"], extra
    )
    sessions = read_trials(path)
    assert [(s.subject, s.session_date, s.ephys_rig) for s in sessions] == [
        ("m1", "2020-08-21", False),
        ("m1", "2020-08-24", False),
        ("m2", "2020-08-21", False),
        ("m2", "2020-08-24", True),
    ]


def test_trials_are_put_in_trial_index_order(tmp_path: Path) -> None:
    columns, rows = read_rows(anchor(TRIALS))
    day = [r for r in rows if r["session_date"] == "2020-08-21"][:5]
    path = write_rows(tmp_path / "t.csv", columns, list(reversed(day)))
    [session] = read_trials(path)
    assert [t.stim_on_time for t in session.trials] == [float(r["stimOn_times"]) for r in day]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(choice="left"), "row 4: column choice: must be one of -1, 0, 1"),
        (lambda r: r.update(feedbackType="2"), "row 4: column feedbackType: must be one of -1, 1"),
        (lambda r: r.update(contrastLeft="1.5"), "row 4: column contrastLeft: must be between"),
        (lambda r: r.update(response_times="soon"), "row 4: column response_times: not a number"),
        (lambda r: r.update(session_date="21/08/2020"), "row 4: column session_date: not a date"),
        (lambda r: r.update(task_protocol=""), "row 4: column task_protocol: empty"),
        (
            lambda r: r.update(task_protocol="biased"),
            "row 4: column task_protocol: differs from the session's first row (row 2)",
        ),
        (
            lambda r: r.update(choice="0", feedbackType="1"),
            "row 4: column feedbackType: a no-go trial (choice 0) cannot be rewarded",
        ),
    ],
)
def test_a_bad_value_names_the_file_row_and_column(
    tmp_path: Path, change: object, message: str
) -> None:
    columns, rows = read_rows(anchor(TRIALS))
    rows = rows[:5]
    change(rows[2])  # type: ignore[operator]
    path = write_rows(tmp_path / "bad.csv", columns, rows)
    with pytest.raises(TrialTableError) as caught:
        read_trials(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(path), "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert f"error: {path}: {message}" in output
    assert "Traceback" not in output


def test_a_subject_that_cannot_be_a_mouse_id_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    columns, rows = read_rows(anchor(TRIALS))
    rows = [{**row, "subject": "M1" if i < 3 else "bad id!"} for i, row in enumerate(rows[:5])]
    path = write_rows(tmp_path / "bad.csv", ["subject", *columns], rows)
    message = f"{path}: row 5: column subject: subject 'bad id!' is not allowed"
    with pytest.raises(TrialTableError, match=re.escape(message)):
        read_trials(path)
    # without a subject column the file name is the subject
    plain = [{k: v for k, v in row.items() if k != "subject"} for row in rows]
    unnamed = write_rows(tmp_path / "my trials.csv", columns, plain)
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(unnamed), "--out", str(tmp_path)
    )
    assert code == 2 and "Traceback" not in output
    assert "its file name is the subject, and subject 'my trials' is not allowed" in output
    assert "add a subject column or rename the file" in output


def test_the_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    columns, rows = read_rows(anchor(TRIALS))
    out = str(tmp_path / "out.csv")
    missing = write_rows(
        tmp_path / "missing.csv",
        [c for c in columns if c not in ("choice", "stimOn_times")],
        [{k: v for k, v in r.items() if k not in ("choice", "stimOn_times")} for r in rows[:3]],
    )
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(missing), "--out", out
    )
    assert code == 2
    assert f"error: {missing}: missing column(s) choice, stimOn_times" in output
    code, output = invoke(
        "evaluate", "--curriculum", "no-such-ladder", "--trials", str(TRIALS), "--out", out
    )
    assert code == 2 and "unknown curriculum 'no-such-ladder'" in output
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(tmp_path / "nope.csv"), "--out", out
    )
    assert code == 2 and f"error: {tmp_path / 'nope.csv'}: no such file" in output
    code, output = invoke(
        "evaluate",
        "--curriculum",
        str(BASIC),
        "--trials",
        str(TRIALS),
        "--sessions",
        str(TRIALS),
        "--out",
        out,
    )
    assert code == 2 and "exactly one of --sessions" in output
    code, output = invoke("evaluate", "--curriculum", str(BASIC), "--out", out)
    assert code == 2 and "exactly one of --sessions" in output
    empty = write_rows(tmp_path / "empty.csv", list(TRIAL_COLUMNS), [])
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(empty), "--out", out
    )
    assert code == 2 and "no trials" in output
    assert "Traceback" not in output
    assert not Path(out).exists()


def test_any_curriculum_file_judges_the_trials_on_the_event_path(tmp_path: Path) -> None:
    """--curriculum FILE: the decisions are the curriculum's, made by the training core."""
    out = tmp_path / "status.csv"
    code, output = invoke(
        "evaluate", "--curriculum", str(BASIC), "--trials", str(anchor(TRIALS)), "--out", str(out)
    )
    assert code == 0, output
    assert "11 dates of 1 subject(s), 11 sessions, judged by basic-shaping 0.1.0" in output
    _, rows = read_rows(out)
    assert [r["session_date"] for r in rows][:2] == ["2020-08-21", "2020-08-24"]
    assert rows[0]["subject"] == "trials_test_flat"
    assert rows[0]["previous_status"] == "s1_habituation"
    assert rows[0]["n_trials"] == "719"
    # The first session had 719 trials and 90% of responses correct: basic-shaping's first rule
    # (accuracy over 200 trials >= 0.65 and at least 100 trials) holds.
    assert (rows[0]["status"], rows[0]["decision"]) == ("s2_training", "progress")
    evidence = json.loads(rows[0]["evidence"])
    assert evidence[0]["verdict"] is True
    assert {o["metric"] for o in evidence[0]["observations"]} >= {"session_trials"}
    assert all(r["status"] == rows[i + 1]["previous_status"] for i, r in enumerate(rows[:-1]))


def test_sessions_of_one_date_are_pooled_as_ibl_concatenates_them(tmp_path: Path) -> None:
    """A date run as two sessions gets the status and values of the date run as one."""
    columns, rows = read_rows(anchor(TRIALS))
    days = [r for r in rows if r["session_date"] in ("2020-08-21", "2020-08-24", "2020-08-25")]
    whole = write_rows(tmp_path / "whole.csv", columns, days)
    first = [r for r in days if r["session_date"] == "2020-08-21"]
    split = [{**r, "session": "1" if i < 300 else "2"} for i, r in enumerate(first)] + [
        {**r, "session": "1"} for r in days if r["session_date"] != "2020-08-21"
    ]
    parts = write_rows(tmp_path / "split.csv", [*columns, "session"], split)
    results = []
    for path in (whole, parts):
        out = tmp_path / f"{path.stem}-status.csv"
        code, output = invoke(
            "evaluate", "--curriculum", "ibl", "--trials", str(path), "--out", str(out)
        )
        assert code == 0, output
        results.append((output, read_rows(out)[1]))
    (said_whole, one), (said_split, two) = results
    assert "3 dates of 1 subject(s), 3 sessions" in said_whole
    assert "3 dates of 1 subject(s), 4 sessions" in said_split
    assert [r["sessions"] for r in two] == ["2", "1", "1"]
    assert two[0]["task_protocol"] == "training+training"
    assert two[0]["n_trials"] == "719" and two[0]["n_trials[-1]"] == "719.0"
    # Per-date values are the same; what counts sessions (not dates) may not be.
    ignore = {"subject", "sessions", "task_protocol", "evidence", "sessions_in_training"}
    assert [{k: v for k, v in r.items() if k not in ignore} for r in two] == [
        {k: v for k, v in r.items() if k not in ignore} for r in one
    ]


# --------------------------------------------------------------------------- conformance

REPLAY = "SWC_054"
"""The subject of the day-by-day replay (all 11 dates)."""

BIAS_RTOL = 1e-3
"""Tolerance on psychometric parameters (relative; absolute 1e-6 for lapses near 0)."""

CONCAT_RTOL = 1e-5
"""Upstream's own tolerance on the pooled fit of ``upstream_concatenate_test``."""

RT_ABS = 1e-6
"""Reaction times are kept to the microsecond (services/domain/session_stats.py)."""

PSYCH = ("bias", "threshold", "lapse_low", "lapse_high")

# Upstream criterion -> (the observation in our evidence: its metric expression, comparator and
# threshold; how the upstream value maps to the observed one), per criterion set (the name in
# upstream's "Criteria" entry). "fit": a psychometric value; "abs": its absolute value; "min"/
# "max": of the per-date list (None when empty); "count": exact; "zero": the 0% contrast test.
_1A = {
    "Zero_contrast": ("window_trials(dates=3, contrast=0)", ">", 0.0, "zero"),
    "LapseLow_50": ("psych_lapse_low(dates=3)", "<", 0.2, "fit"),
    "LapseHigh_50": ("psych_lapse_high(dates=3)", "<", 0.2, "fit"),
    "Bias": ("abs(psych_bias(dates=3))", "<", 16.0, "abs"),
    "Threshold": ("psych_threshold(dates=3)", "<", 19.0, "fit"),
    "N_trials": ("min(window_n_trials(dates=3))", ">", 200.0, "min"),
    "Perf_easy": ("min(window_perf_easy(dates=3))", ">", 0.8, "min"),
}
_1B = {
    **{k: (m, c, t, how) for k, (m, c, t, how) in _1A.items() if k != "Perf_easy"},
    "LapseLow_50": ("psych_lapse_low(dates=3)", "<", 0.1, "fit"),
    "LapseHigh_50": ("psych_lapse_high(dates=3)", "<", 0.1, "fit"),
    "Bias": ("abs(psych_bias(dates=3))", "<", 10.0, "abs"),
    "Threshold": ("psych_threshold(dates=3)", "<", 20.0, "fit"),
    "N_trials": ("min(window_n_trials(dates=3))", ">", 400.0, "min"),
    "Perf_tasy": ("min(window_perf_easy(dates=3))", ">", 0.9, "min"),  # sic, upstream's key
    "Reaction_time": ("window_rt_zero(dates=3)", "<", 2.0, "rt"),
}
_EPHYS = {
    "LapseLow_80": ("psych_lapse_low(dates=3, block=0.8)", "<", 0.1, "fit"),
    "LapseHigh_80": ("psych_lapse_high(dates=3, block=0.8)", "<", 0.1, "fit"),
    "LapseLow_20": ("psych_lapse_low(dates=3, block=0.2)", "<", 0.1, "fit"),
    "LapseHigh_20": ("psych_lapse_high(dates=3, block=0.2)", "<", 0.1, "fit"),
    "Bias_shift": (
        "psych_bias(dates=3, block=0.8) - psych_bias(dates=3, block=0.2)",
        ">",
        5.0,
        "fit",
    ),
    "N_trials": ("min(window_n_trials(dates=3))", ">", 400.0, "min"),
    "Perf_easy": ("min(window_perf_easy(dates=3))", ">", 0.9, "min"),
    "Reaction_time": ("window_rt_zero(dates=3)", "<", 2.0, "rt"),
}
CRITERIA: dict[str, dict[str, tuple[str, str, float, str]]] = {
    "trained_1a": _1A,
    "trained_1b": _1B,
    "ready4ephysrig": {},  # with a training date in the window: upstream reports NBiased only
    "ready4delay": {
        "N_ephys": ("window_ephys_count(dates=3)", ">", 0.0, "count"),
        "N_trials": ("max(window_n_trials(dates=3, ephys_rig=True))", ">", 400.0, "max"),
        "Perf_easy": ("max(window_perf_easy(dates=3, ephys_rig=True))", ">", 0.9, "max"),
    },
    "ready4recording": {
        **_EPHYS,
        "N_ephys": ("window_ephys_count(dates=3)", ">=", 3.0, "count"),
        "N_delay": ("window_delay_count(dates=3, min_delay_s=900)", ">", 0.0, "count"),
    },
}
FLAG = {
    "trained_1a": "crit_1a",
    "trained_1b": "crit_1b",
    "ready4ephysrig": "crit_ephysrig",
    "ready4delay": "crit_delay",
    "ready4recording": "crit_recording",
}
"""Upstream's criterion name -> the curriculum's reported flag (1 when it holds)."""


@dataclass(frozen=True)
class Judged:
    """One decision as a path exposes it: date, status, reported metrics, evidence, warnings."""

    date: str
    status: str
    metrics: dict[str, float | None]
    evidence: list[dict[str, Any]]
    warnings: tuple[str, ...]


def expected() -> dict[str, Any]:
    return json.loads(anchor(EXPECTED).read_text())  # type: ignore[no-any-return]


def conformance_table(tmp_path: Path) -> Path:
    """The trials of every upstream case (one subject each, exactly the case's dates, its
    ephys-rig dates and start delays) and of the replay (all dates), as one IBL trial table."""
    columns, rows = read_rows(anchor(TRIALS))
    out: list[dict[str, str]] = []
    for case in expected()["upstream_status_cases"]:
        dates = sorted(case["session_dates"])
        # n_delay counts the window's dates started 900 s late or more: give it to the newest.
        delayed = set(dates[::-1][: case["n_delay"]])
        for row in rows:
            if row["session_date"] in dates:
                out.append(
                    {
                        **row,
                        "subject": case["test"],
                        "ephys_rig": str(row["session_date"] in case["ephys_sess_dates"]),
                        "session_start_delay_s": "1000" if row["session_date"] in delayed else "0",
                    }
                )
    for row in rows:
        out.append({**row, "subject": REPLAY, "ephys_rig": "false", "session_start_delay_s": ""})
    extra = ["subject", "ephys_rig", "session_start_delay_s"]
    return write_rows(tmp_path / "conformance_trials.csv", [*columns, *extra], out)


def close(ours: float | None, theirs: float, rtol: float, atol: float = 0.0) -> bool:
    return ours is not None and math.isclose(ours, theirs, rel_tol=rtol, abs_tol=atol)


class Tally:
    """Counts the values compared and collects the mismatches."""

    def __init__(self) -> None:
        self.matched = 0
        self.compared = 0
        self.misses: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        self.compared += 1
        self.matched += ok
        if not ok:
            self.misses.append(what)


def observation(judged: Judged, metric: str, comparator: str, threshold: float) -> dict[str, Any]:
    for rule in judged.evidence:
        for seen in rule["observations"]:
            if (seen["metric"], seen["comparator"], seen["threshold"]) == (
                metric,
                comparator,
                threshold,
            ):
                return seen  # type: ignore[no-any-return]
    raise AssertionError(
        f"{judged.date}: no observation {metric} {comparator} {threshold} in the evidence"
    )


def series(judged: Judged, name: str) -> list[float | None]:
    """A reported per-date series, newest first (as upstream lists its windows)."""
    values = []
    for back in range(1, 4):
        key = f"{name}[-{back}]"
        if key in judged.metrics:
            values.append(judged.metrics[key])
    return values


def check_window_case(case: dict[str, Any], judged: Judged, tally: Tally) -> None:
    """(a): the status and every info and criterion value of one upstream case."""
    name = case["test"]
    info = case["info"]
    tally.check(judged.status == case["expected_status"], f"{name}: status {judged.status!r}")
    tally.check(
        judged.metrics.get("window_dates") == len(case["session_dates"]),
        f"{name}: window of {judged.metrics.get('window_dates')} dates",
    )
    tally.check(series(judged, "n_trials") == info["n_trials"], f"{name}: n_trials")
    ours_easy = series(judged, "perf_easy")
    tally.check(
        len(ours_easy) == len(info["perf_easy"])
        and all(close(a, b, 1e-12) for a, b in zip(ours_easy, info["perf_easy"], strict=False)),
        f"{name}: perf_easy {ours_easy} != {info['perf_easy']}",
    )
    tally.check(close(judged.metrics.get("rt"), info["rt"], 0, RT_ABS), f"{name}: rt")
    for fit, prefix in (("psych", "psych_"), ("psych_20", "psych_20_"), ("psych_80", "psych_80_")):
        if fit in info:
            for part, value in zip(PSYCH, info[fit], strict=True):
                ours = judged.metrics.get(prefix + part)
                tally.check(
                    close(ours, value, BIAS_RTOL, 1e-6), f"{name}: {fit} {part} {ours} != {value}"
                )
    for key in ("n_ephys", "n_delay"):
        if key in info:
            tally.check(judged.metrics.get(key) == info[key], f"{name}: {key}")
    criteria = case["criteria"]
    target = criteria["Criteria"]["val"]
    flag = judged.metrics.get(FLAG[target])
    tally.check(flag == float(criteria["Criteria"]["pass"]), f"{name}: {FLAG[target]} = {flag}")
    if "NBiased" in criteria:
        protocols = criteria["NBiased"]["val"]
        tally.check(
            judged.metrics.get("training_dates") == protocols.count("training"),
            f"{name}: training dates",
        )
    for key, (metric, comparator, threshold, how) in CRITERIA[target].items():
        value, passed = criteria[key]["val"], criteria[key]["pass"]
        seen = observation(judged, metric, comparator, threshold)
        observed = seen["observed"]
        if how == "zero":
            ok = (observed is not None and observed > 0) == (0.0 in value)
        elif how in ("min", "max"):
            want = (min if how == "min" else max)(value) if value else None
            ok = observed == want if want is None else close(observed, want, 1e-12)
        elif how == "abs":
            ok = close(observed, abs(value), BIAS_RTOL, 1e-6)
        elif how == "rt":
            ok = close(observed, value, 0, RT_ABS)
        elif how == "count":
            ok = observed == value
        else:
            ok = close(observed, value, BIAS_RTOL, 1e-6)
        tally.check(ok, f"{name}: {key} observed {observed}, upstream {value}")
        tally.check(seen["passed"] == passed, f"{name}: {key} passed {seen['passed']}")


def check_concatenate(data: dict[str, Any], judged: Judged, tally: Tally) -> None:
    """(b): upstream_concatenate_test's pooled metrics, for the window 08-21/08-24/08-25."""
    tally.check(series(judged, "n_trials") == data["n_trials"], "concatenate: n_trials")
    tally.check(
        all(
            close(a, b, 1e-8)
            for a, b in zip(series(judged, "perf_easy"), data["perf_easy"], strict=True)
        ),
        "concatenate: perf_easy",
    )
    for part, value in zip(PSYCH, data["psych_bias_threshold_lapselow_lapsehigh"], strict=True):
        ours = judged.metrics.get(f"psych_{part}")
        tally.check(close(ours, value, CONCAT_RTOL), f"concatenate: {part} {ours} != {value}")
    tally.check(
        close(judged.metrics.get("rt"), data["median_rt_zero_contrast"], 0, RT_ABS),
        "concatenate: rt",
    )


def raw_status(judged: Judged) -> str:
    """IBL's status for the window before the no-regression rule, read off the decision's
    reported values: the protocols of the window and which criteria held."""
    m = judged.metrics
    training, dates = m["training_dates"], m["window_dates"]
    if training == dates:
        return "trained 1b" if m["crit_1b"] else "trained 1a" if m["crit_1a"] else "in training"
    if training:
        return "trained 1b"
    for flag, status in (
        ("crit_recording", "ready4recording"),
        ("crit_delay", "ready4delay"),
        ("crit_ephysrig", "ready4ephysrig"),
    ):
        if m[flag]:
            return status
    return "trained 1b"


def check_replay(rows: list[dict[str, Any]], judged: list[Judged], tally: Tally) -> None:
    """(c): every date's final status, its raw status and the regression warnings."""
    tally.check([j.date for j in judged] == [r["date"] for r in rows], "replay: dates")
    for row, day in zip(rows, judged, strict=True):
        tally.check(day.status == row["final_status"], f"{row['date']}: final {day.status!r}")
        tally.check(day.metrics.get("window_dates") == len(row["window"]), f"{row['date']}: window")
        raw = raw_status(day)
        tally.check(raw == row["raw_status"], f"{row['date']}: raw {raw!r}")
        prevented = "regression_prevented" in day.warnings
        tally.check(
            prevented == (row["raw_status"] != row["final_status"]),
            f"{row['date']}: regression warning {prevented}",
        )


def check_everything(by_subject: dict[str, list[Judged]], path: str) -> None:
    data = expected()
    cases = data["upstream_status_cases"]
    tallies = {"window cases": Tally(), "concatenate": Tally(), "replay": Tally()}
    for case in cases:
        judged = by_subject[case["test"]]
        assert [j.date for j in judged] == sorted(case["session_dates"])
        check_window_case(case, judged[-1], tallies["window cases"])
    check_concatenate(
        data["upstream_concatenate_test"],
        by_subject["test_in_training"][-1],
        tallies["concatenate"],
    )
    check_replay(
        data["chronological_replay_derived"]["rows"], by_subject[REPLAY], tallies["replay"]
    )
    statuses = sum(c["expected_status"] == by_subject[c["test"]][-1].status for c in cases)
    finals = sum(
        r["final_status"] == j.status
        for r, j in zip(
            data["chronological_replay_derived"]["rows"], by_subject[REPLAY], strict=True
        )
    )
    print(
        f"\nIBL conformance through {path}: upstream window cases {statuses}/{len(cases)} "
        f"statuses; replay {finals}/11 final statuses; values matched: "
        + ", ".join(f"{k} {t.matched}/{t.compared}" for k, t in tallies.items())
    )
    misses = [m for t in tallies.values() for m in t.misses]
    assert misses == []
    assert len(cases) == 7 and tallies["window cases"].compared > 100


def judged_from_table(path: Path) -> dict[str, list[Judged]]:
    _, rows = read_rows(path)
    fixed = {*STATUS_COLUMNS, "warnings", "evidence"}
    out: dict[str, list[Judged]] = {}
    for row in rows:
        metrics = {k: (float(v) if v else None) for k, v in row.items() if k not in fixed}
        out.setdefault(row["subject"], []).append(
            Judged(
                row["session_date"],
                row["status"],
                metrics,
                json.loads(row["evidence"]),
                tuple(w for w in row["warnings"].split(";") if w),
            )
        )
    return out


def test_ibl_conformance_through_shaping_evaluate(tmp_path: Path) -> None:
    """(a), (b), (c) through the batch command: one run over every case's subject."""
    table = conformance_table(tmp_path)
    out = tmp_path / "status.csv"
    code, output = invoke(
        "evaluate", "--curriculum", "ibl", "--trials", str(table), "--out", str(out)
    )
    assert code == 0, output
    assert "32 dates of 8 subject(s), 32 sessions, judged by ibl" in output
    check_everything(judged_from_table(out), "shaping evaluate --trials")


def run_stream(table: Path, store: Any = None) -> tuple[Any, dict[str, list[Judged]]]:
    """Every subject's sessions published to the embedded runtime as a rig would, one session
    at a time at the stage last assigned; the decisions read back from the log."""

    runtime = embedded_runtime(store=store)
    sessions = read_trials(table)
    out: dict[str, list[Judged]] = {}
    for subject in dict.fromkeys(s.subject for s in sessions):
        runtime.publish(
            [
                MouseEnrolled(
                    event_id=f"{subject}-enrol",
                    mouse_id=subject,
                    occurred_at=datetime(2020, 8, 1, tzinfo=UTC),
                    curriculum_name="ibl",
                )
            ]
        )
        for number, session in enumerate(s for s in sessions if s.subject == subject):
            assignment = runtime.latest_assignment(subject)
            assert assignment is not None
            session_id = f"{subject}-{number}"
            runtime.publish(
                session_events(
                    session,
                    mouse_id=subject,
                    session_id=session_id,
                    stage=assignment.stage,
                    curriculum_name=assignment.curriculum_name,
                    curriculum_version=assignment.curriculum_version,
                    start=datetime.fromisoformat(session.session_date).replace(hour=9, tzinfo=UTC),
                    rig_id="rig-ibl",
                )
            )
    decoded = [runtime.codec.decode(r.value) for r in runtime.log.read(runtime.topics.decisions)]
    for event in decoded:
        if isinstance(event, StageTransitioned):
            warnings = tuple(
                w.kind
                for w in decoded
                if isinstance(w, TrainingWarning) and w.causation_id == event.event_id
            )
            out.setdefault(event.mouse_id, []).append(
                Judged(
                    event.session_date or "",
                    event.to_stage,
                    dict(event.metrics),
                    [e.model_dump(mode="json") for e in event.rule_evaluations],
                    warnings,
                )
            )
    return runtime, out


def test_ibl_conformance_through_the_event_stream(tmp_path: Path) -> None:
    """(a), (b), (c) with a rig publishing session by session to the embedded runtime; the
    status table records the first date each status was reached."""
    from sqlalchemy import select

    from shaping.services.projector.tables import stage_reached

    store = sql_store(f"sqlite:///{tmp_path / 'status.sqlite'}")
    try:
        _, by_subject = run_stream(conformance_table(tmp_path), store)
        check_everything(by_subject, "the embedded runtime (rig -> processor step -> log)")
        with store.engine.connect() as conn:
            reached = conn.execute(
                select(stage_reached.c.stage, stage_reached.c.first_date).where(
                    stage_reached.c.mouse_id == REPLAY
                )
            ).all()
    finally:
        store.close()
    rows = expected()["chronological_replay_derived"]["rows"]
    first: dict[str, str] = {}
    for row in rows:
        first.setdefault(row["final_status"], row["date"])
    assert dict(reached) == first


@pytest.mark.kafka
def test_one_ibl_mouse_through_kafka_and_the_processor_reaches_ibls_statuses(
    processors: ProcessorRunner,  # noqa: F811
    publisher: Publisher,  # noqa: F811
    outputs: TopicReader,  # noqa: F811
    tmp_path: Path,
) -> None:
    """(c) on the Kafka path: SWC_054's 11 sessions from a rig-like producer, each run at the
    stage the faust processor assigned after the previous one; the decisions (statuses,
    reported values, evidence, warnings) are the embedded runtime's, value for value."""
    processors.start(new_processor_id())
    sessions = read_trials(anchor(TRIALS))
    publisher.events(
        [
            MouseEnrolled(
                event_id=f"{REPLAY}-enrol",
                mouse_id=REPLAY,
                occurred_at=datetime(2020, 8, 1, tzinfo=UTC),
                curriculum_name="ibl",
            )
        ]
    )

    def assignment(n: int) -> AssignmentIssued:
        found = outputs.wait_for(
            lambda _: [
                a for a in of_mouse(outputs, REPLAY, AssignmentIssued) if a.session_number == n
            ],
            what=f"assignment for session {n}",
            on_timeout=processors.log_tail,
        )
        return found[0]  # type: ignore[no-any-return]

    for number, session in enumerate(sessions):
        assigned = assignment(number + 1)
        publisher.events(
            session_events(
                session,
                mouse_id=REPLAY,
                session_id=f"{REPLAY}-{number}",
                stage=assigned.stage,
                curriculum_name=assigned.curriculum_name,
                curriculum_version=assigned.curriculum_version,
                start=datetime.fromisoformat(session.session_date).replace(hour=9, tzinfo=UTC),
                rig_id="rig-ibl",
            )
        )
    assignment(len(sessions) + 1)
    decisions = sorted(of_mouse(outputs, REPLAY, StageTransitioned), key=lambda d: d.session_total)
    warnings = outputs.events(event_type=TrainingWarning)
    judged = [
        Judged(
            d.session_date or "",
            d.to_stage,
            dict(d.metrics),
            [e.model_dump(mode="json") for e in d.rule_evaluations],
            tuple(w.kind for w in warnings if w.causation_id == d.event_id),
        )
        for d in decisions
    ]
    assert outputs.events(event_type=EventRejected) == []
    tally = Tally()
    check_replay(expected()["chronological_replay_derived"]["rows"], judged, tally)
    table = write_rows(
        tmp_path / "replay.csv",
        [*read_rows(TRIALS)[0], "subject"],
        [{**r, "subject": REPLAY} for r in read_rows(TRIALS)[1]],
    )
    _, embedded = run_stream(table)
    same = sum(a == b for a, b in zip(judged, embedded[REPLAY], strict=True))
    print(
        f"\nIBL mouse {REPLAY} through Kafka and the processor: replay {tally.matched}/"
        f"{tally.compared} values; {same}/{len(judged)} decisions identical to the embedded "
        "runtime's"
    )
    assert tally.misses == []
    assert same == len(judged) == 11
