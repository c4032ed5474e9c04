"""`shaping plot MOUSE`: the learning curve with a stage timeline that marks overrides,
migrations, ejections and warnings, and `--kind ibl`, IBL's training view. The status tables
are written by the embedded runtime (the same processor step and projector as on Kafka); the
tests read the figure's content (titles, lines, markers, legend labels), never its pixels."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from sqlalchemy import create_engine
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    Event,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    SessionEnded,
    SessionStarted,
    StageOverridden,
    TrialCompleted,
)
from shaping.services.cli import app
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain import CurriculumCatalog
from shaping.services.operator.ibl_trials import read_trials, session_events
from shaping.services.operator.plot import (
    IBL_STATUS_ORDER,
    ibl_figure,
    learning_figure,
    psychometric,
    read_mouse,
    reported_metrics_from_log,
)
from tests.support.anchors import IBL
from tests.support.scripts import REPO
from tests.support.story import trials
from tests.support.wiring import CODEC, embedded_runtime, sql_store

T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
BASIC = REPO / "curricula" / "basic-shaping.yaml"
IBL_TRIALS = IBL / "trials_test_flat.csv"
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def axes_titled(fig: Figure, title: str) -> Axes:
    [found] = [ax for ax in fig.axes if ax.get_title() == title]
    return found


def legend_labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, ax.get_title()
    return [text.get_text() for text in legend.get_texts()]


def collection(ax: Axes, label: str) -> PathCollection:
    [found] = [c for c in ax.collections if c.get_label() == label]
    assert isinstance(found, PathCollection)
    return found


def offsets(ax: Axes, label: str) -> list[tuple[float, float]]:
    """Where the markers of a scatter are."""
    return [(float(x), float(y)) for x, y in np.asarray(collection(ax, label).get_offsets())]


def line(ax: Axes, label: str) -> Any:
    [found] = [ln for ln in ax.get_lines() if ln.get_label() == label]
    return found


def save_for_eyes(fig: Figure, name: str) -> None:
    """Keeps a PNG of the figure where a person can look at it (SHAPING_PLOT_DIR)."""
    import os

    folder = os.environ.get("SHAPING_PLOT_DIR")
    if folder:
        fig.savefig(Path(folder) / name, dpi=90)


# --- a basic-shaping mouse through interventions, a migration and warnings -------------------


def curriculum(version: str) -> Any:
    """basic-shaping at ``version``, warning about short sessions at its first stage."""
    data = yaml.safe_load(BASIC.read_text())
    data["version"] = version
    data["stages"][0]["warnings"] = [
        {
            "name": "short_session",
            "when": "session_trials < 50",
            "description": "Fewer than 50 trials in the session.",
        }
    ]
    return compile_curriculum(data)


class Story:
    def __init__(self) -> None:
        self.n = 0
        self.events: list[Event] = []

    def next_id(self) -> str:
        self.n += 1
        return f"ev-{self.n:05d}"

    def session(
        self, session_id: str, outcomes: list[str], stage: str, day: float, version: str = "0.1.0"
    ) -> None:
        start = T0 + timedelta(days=day)
        common: dict[str, Any] = {"mouse_id": "M1", "rig_id": "rig-1", "session_id": session_id}
        self.events.append(
            SessionStarted(
                event_id=self.next_id(),
                occurred_at=start,
                stage=stage,
                curriculum_name="basic-shaping",
                curriculum_version=version,
                parameters={},
                **common,
            )
        )
        for i, outcome in enumerate(outcomes):
            self.events.append(
                TrialCompleted(
                    event_id=self.next_id(),
                    occurred_at=start + timedelta(seconds=10 * (i + 1)),
                    trial_index=i,
                    outcome=outcome,  # type: ignore[arg-type]
                    **common,
                )
            )
        self.events.append(
            SessionEnded(
                event_id=self.next_id(),
                occurred_at=start + timedelta(seconds=10 * (len(outcomes) + 1)),
                n_trials=len(outcomes),
                end_reason="completed",
                duration_s=10.0 * (len(outcomes) + 1),
                **common,
            )
        )

    def override(self, to_stage: str, day: float) -> None:
        self.events.append(
            StageOverridden(
                event_id=self.next_id(),
                mouse_id="M1",
                occurred_at=T0 + timedelta(days=day),
                to_stage=to_stage,
                reason="lost weight",
                overridden_by="ada",
            )
        )


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """M1: a short session (warning), a progress, an honoured override back to s1 and a refused
    one, progress again, a migration 0.1.0 -> 0.2.0, a session on 0.2.0, an ejection."""
    url = f"sqlite:///{tmp_path_factory.mktemp('plot') / 'lab.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(
        store, catalog=CurriculumCatalog([curriculum("0.1.0"), curriculum("0.2.0")])
    )
    story = Story()
    story.events.append(
        MouseEnrolled(
            event_id=story.next_id(),
            mouse_id="M1",
            occurred_at=T0 - timedelta(hours=1),
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
        )
    )
    story.session("s-1", trials(20), "s1_habituation", 0)  # short: warning, stay
    story.session("s-2", trials(correct=180, incorrect=20), "s1_habituation", 1)  # progress
    story.override("s1_habituation", 1.5)  # honoured: back to s1
    story.override("s9", 1.6)  # refused: no such stage
    story.session("s-3", trials(30), "s1_habituation", 2)  # short again: warning, stay
    story.session("s-4", trials(correct=180, incorrect=20), "s1_habituation", 3)  # progress
    story.events.append(
        MouseMigrated(
            event_id=story.next_id(),
            mouse_id="M1",
            occurred_at=T0 + timedelta(days=3.5),
            curriculum_name="basic-shaping",
            from_version="0.1.0",
            to_version="0.2.0",
            from_stage="s2_training",
            to_stage="s2_training",
        )
    )
    story.session("s-5", trials(correct=180, incorrect=20), "s2_training", 4, "0.2.0")
    story.events.append(
        MouseEjected(
            event_id=story.next_id(),
            mouse_id="M1",
            occurred_at=T0 + timedelta(days=4.5),
            reason="end of experiment",
            ejected_by="ada",
        )
    )
    runtime.publish(story.events)
    store.close()
    yield url


@pytest.fixture
def lab_tables(lab_db: str) -> Any:
    engine = create_engine(lab_db)
    try:
        return read_mouse(engine, "M1", codec=CODEC)
    finally:
        engine.dispose()


def test_the_tables_hold_what_the_timeline_marks(lab_tables: Any) -> None:
    sessions = lab_tables.sessions
    assert list(sessions["stage"]) == [
        "s1_habituation",
        "s1_habituation",
        "s1_habituation",
        "s1_habituation",
        "s2_training",
    ]
    assert list(sessions["curriculum_version"]) == ["0.1.0"] * 4 + ["0.2.0"]
    kinds = sorted(lab_tables.interventions["kind"])
    assert kinds == ["eject", "override", "override"]
    assert sorted(lab_tables.warnings["kind"]) == ["short_session", "short_session"]


def test_the_stage_timeline_marks_interventions_migrations_and_warnings(lab_tables: Any) -> None:
    fig = learning_figure("M1", lab_tables)
    try:
        save_for_eyes(fig, "learning.png")
        curve = axes_titled(fig, "learning curve")
        timeline = axes_titled(fig, "stage timeline")
        labels = legend_labels(timeline)
        assert labels == [
            "stage (after each decision and override)",
            "session",
            "override",
            "override (refused)",
            "ejection",
            "migration",
            "warning: short_session",
        ]
        # where each mark is: x is the session number (n.5: between sessions n and n+1)
        # the override and the refused one after it, around 2.5: at s1_habituation (level 0)
        override = offsets(timeline, "override")
        assert override == [(2.4, 0.0)]
        refused = offsets(timeline, "override (refused)")
        assert refused == [(2.6, 0.0)]
        ejection = offsets(timeline, "ejection")
        assert [p[0] for p in ejection] == [5.5]
        warnings = offsets(timeline, "warning: short_session")
        assert [p[0] for p in warnings] == [1.0, 3.0]
        migration = line(timeline, "migration")
        assert list(migration.get_xdata()) == [4.5, 4.5]
        texts = [t.get_text() for t in timeline.texts]
        assert "0.1.0 → 0.2.0" in texts
        # the stage per session, and the learning curve above it
        sessions = offsets(timeline, "session")
        assert sessions == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1)]
        # the stage path: to s2 after session 2, back to s1 by the override, to s2 after
        # session 4, to s3 after session 5, until the ejection
        stages = line(timeline, "stage (after each decision and override)")
        path = list(zip(stages.get_xdata(), stages.get_ydata(), strict=True))
        assert [y for _, y in path] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 2, 2]
        assert path[0] == (0.5, 0)  # enrolled at s1_habituation
        assert path[4] == (2.12, 1) and path[5] == (2.4, 0) and path[-1] == (5.5, 2)
        assert [t.get_text() for t in timeline.get_yticklabels()] == [
            "s1_habituation",
            "s2_training",
            "s3_full_task",
        ]
        assert [c.get_label() for c in curve.collections] == ["s1_habituation", "s2_training"]
        assert len(offsets(curve, "s1_habituation")) == 4
    finally:
        plt.close(fig)


def test_a_mouse_without_interventions_has_only_its_stages_in_the_legend(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'quiet.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store, catalog=CurriculumCatalog([curriculum("0.1.0")]))
    story = Story()
    story.events.append(
        MouseEnrolled(
            event_id=story.next_id(),
            mouse_id="M1",
            occurred_at=T0,
            curriculum_name="basic-shaping",
        )
    )
    story.session("s-1", trials(correct=180, incorrect=20), "s1_habituation", 0)
    runtime.publish(story.events)
    store.close()
    engine = create_engine(url)
    tables = read_mouse(engine, "M1", codec=CODEC)
    engine.dispose()
    fig = learning_figure("M1", tables)
    try:
        assert legend_labels(axes_titled(fig, "stage timeline")) == [
            "stage (after each decision and override)",
            "session",
        ]
    finally:
        plt.close(fig)


def test_plot_command_default_kind_is_the_learning_curve(lab_db: str, tmp_path: Path) -> None:
    out = tmp_path / "m1.png"
    code, output = invoke("plot", "M1", "--out", str(out), "--db-url", lab_db)
    assert code == 0, output
    assert out.read_bytes()[:8] == PNG
    code, output = invoke("plot", "M1", "--kind", "curve", "--db-url", lab_db)
    assert code == 2 and "learning" in output and "ibl" in output


# --- an IBL mouse: the anchor subject through the embedded runtime ---------------------------


@pytest.fixture(scope="module")
def ibl_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """SWC_054's 11 dates, one session each, judged by the ibl curriculum; the status tables
    and the event log."""
    folder = tmp_path_factory.mktemp("ibl")
    url = f"sqlite:///{folder / 'status.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store)
    runtime.publish(
        [
            MouseEnrolled(
                event_id="swc-enrol",
                mouse_id="SWC_054",
                occurred_at=datetime(2020, 8, 1, tzinfo=UTC),
                curriculum_name="ibl",
            )
        ]
    )
    for number, session in enumerate(read_trials(IBL_TRIALS)):
        assignment = runtime.latest_assignment("SWC_054")
        assert assignment is not None
        runtime.publish(
            session_events(
                session,
                mouse_id="SWC_054",
                session_id=f"SWC_054-{number}",
                stage=assignment.stage,
                curriculum_name=assignment.curriculum_name,
                curriculum_version=assignment.curriculum_version,
                start=datetime.fromisoformat(session.session_date).replace(hour=9, tzinfo=UTC),
                rig_id="rig-ibl",
            )
        )
    log = folder / "events.jsonl"
    runtime.log.save_jsonl(log, runtime.codec)
    store.close()
    yield url, log


@pytest.fixture(scope="module")
def ibl_reported(ibl_lab: tuple[str, Path]) -> dict[str, dict[str, float | None]]:
    return reported_metrics_from_log(ibl_lab[1], "SWC_054", default_codec())


def _ibl_tables(ibl_lab: tuple[str, Path], with_log: bool) -> Any:
    engine = create_engine(ibl_lab[0])
    try:
        return read_mouse(
            engine, "SWC_054", events_log=ibl_lab[1] if with_log else None, codec=CODEC
        )
    finally:
        engine.dispose()


def test_the_psychometric_function_is_psychofits() -> None:
    import psychofit

    x = np.linspace(-100, 100, 41)
    pars = (-6.2, 18.0, 0.07, 0.12)
    ours = psychometric(x, *pars)
    assert np.allclose(ours, psychofit.erf_psycho_2gammas(np.array(pars), x), atol=1e-12)
    assert math.isclose(psychometric(np.array([-6.2]), *pars)[0], 0.07 + (1 - 0.19) / 2)


def test_reported_metrics_come_from_the_log_by_decision(
    ibl_lab: tuple[str, Path], ibl_reported: dict[str, dict[str, float | None]]
) -> None:
    tables = _ibl_tables(ibl_lab, with_log=False)
    assert set(ibl_reported) == set(tables.decisions["event_id"])
    first = ibl_reported[tables.decisions["event_id"].iloc[0]]
    assert first["n_trials[-1]"] == 719.0 and first["psych_80_bias"] == -6.25


def test_the_ibl_view_from_the_tables_and_the_log(
    ibl_lab: tuple[str, Path], ibl_reported: dict[str, dict[str, float | None]]
) -> None:
    tables = _ibl_tables(ibl_lab, with_log=True)
    fig = ibl_figure("SWC_054", tables)
    try:
        save_for_eyes(fig, "ibl-with-log.png")
        dates = sorted(tables.decisions["session_date"])
        assert len(dates) == 11
        titles = [ax.get_title() for ax in fig.axes]
        for title in (
            "training status per date",
            "trials per session",
            "performance",
            "psychometric bias and threshold (3-date window)",
            "psychometric lapse rates (3-date window)",
            "psychometric curves: all trials",
            "psychometric curves: probabilityLeft 0.2",
            "psychometric curves: probabilityLeft 0.8",
        ):
            assert title in titles, titles

        status = axes_titled(fig, "training status per date")
        path = line(status, "status")
        assert len(path.get_xdata()) == 11
        ticks = [t.get_text() for t in status.get_yticklabels()]
        assert ticks == list(IBL_STATUS_ORDER)
        reached = [tables.decisions["to_stage"].iloc[i] for i in range(11)]
        assert [ticks[int(y)] for y in path.get_ydata()] == reached
        assert "status changed" in legend_labels(status)

        bars = [c for c in axes_titled(fig, "trials per session").containers]
        assert sum(len(c) for c in bars if isinstance(c, BarContainer)) == 11
        heights = [p.get_height() for c in bars for p in c]
        assert heights[0] == 719  # the first date's trials

        performance = axes_titled(fig, "performance")
        assert legend_labels(performance)[:2] == [
            "easy-trial performance of the date",
            "session accuracy (all trials)",
        ]
        easy = line(performance, "easy-trial performance of the date")
        assert len(easy.get_xdata()) == 11
        assert math.isclose(easy.get_ydata()[0], 0.9085365853658537)

        # one curve per date whose fit of that block has all four parameters
        by_date = {
            row["session_date"]: ibl_reported[row["event_id"]]
            for _, row in tables.decisions.iterrows()
        }
        for block, prefix in (
            ("all trials", "psych"),
            ("probabilityLeft 0.2", "psych_20"),
            ("probabilityLeft 0.8", "psych_80"),
        ):
            ax = axes_titled(fig, f"psychometric curves: {block}")
            # a block's fit only for a window of biased dates, as ibllib fits them
            expected = [
                d
                for d in dates
                if all(
                    by_date[d].get(f"{prefix}_{p}") is not None
                    for p in ("bias", "threshold", "lapse_low", "lapse_high")
                )
                and (prefix == "psych" or by_date[d]["training_dates"] == 0)
            ]
            curves = [ln for ln in ax.get_lines() if ln.get_label() in dates]
            assert [c.get_label() for c in curves] == expected, block
            if expected:  # the curve is the lapse-adjusted erf of the reported parameters
                last = by_date[expected[-1]]
                x = np.asarray(curves[-1].get_xdata())
                want = psychometric(
                    x,
                    last[f"{prefix}_bias"],  # type: ignore[arg-type]
                    last[f"{prefix}_threshold"],  # type: ignore[arg-type]
                    last[f"{prefix}_lapse_low"],  # type: ignore[arg-type]
                    last[f"{prefix}_lapse_high"],  # type: ignore[arg-type]
                )
                assert np.allclose(curves[-1].get_ydata(), want)
        assert expected == dates[7:]  # windows of biased dates only: from 09-01
    finally:
        plt.close(fig)


def test_the_ibl_view_from_the_tables_alone_draws_the_same_curves(
    ibl_lab: tuple[str, Path], ibl_reported: dict[str, dict[str, float | None]]
) -> None:
    """The projector keeps the values reported with each decision (metrics_json), so the
    tables alone give what the event log gives: every fit's four signed parameters."""
    tables = _ibl_tables(ibl_lab, with_log=False)
    assert tables.reported == ibl_reported
    fig = ibl_figure("SWC_054", tables)
    try:
        save_for_eyes(fig, "ibl-tables-only.png")
        for block in ("all trials", "probabilityLeft 0.2", "probabilityLeft 0.8"):
            assert axes_titled(fig, f"psychometric curves: {block}").get_lines(), block
        with_log = ibl_figure("SWC_054", _ibl_tables(ibl_lab, with_log=True))
        try:
            for block in ("all trials", "probabilityLeft 0.8"):
                title = f"psychometric curves: {block}"
                ours = [list(line.get_ydata()) for line in axes_titled(fig, title).get_lines()]
                theirs = [
                    list(line.get_ydata()) for line in axes_titled(with_log, title).get_lines()
                ]
                assert ours == theirs, block
        finally:
            plt.close(with_log)
    finally:
        plt.close(fig)


def test_plot_command_kind_ibl(ibl_lab: tuple[str, Path], tmp_path: Path) -> None:
    url, log = ibl_lab
    out = tmp_path / "ibl.png"
    code, output = invoke(
        "plot",
        "SWC_054",
        "--kind",
        "ibl",
        "--out",
        str(out),
        "--db-url",
        url,
        "--events-log",
        str(log),
    )
    assert code == 0, output
    assert out.read_bytes()[:8] == PNG
    code, output = invoke("plot", "SWC_054", "--kind", "ibl", "--out", str(out), "--db-url", url)
    assert code == 0, output
    code, output = invoke(
        "plot",
        "SWC_054",
        "--kind",
        "ibl",
        "--db-url",
        url,
        "--events-log",
        str(tmp_path / "nothing.jsonl"),
        "--out",
        str(out),
    )
    assert code == 2 and "nothing.jsonl" in output


def test_the_decisions_read_are_the_effective_ones(ibl_lab: tuple[str, Path]) -> None:
    tables = _ibl_tables(ibl_lab, with_log=False)
    assert tables.decisions["superseded_by"].isna().all()
    evidence = json.loads(tables.decisions["evidence_json"].iloc[0])
    assert evidence[0]["rule"] == "reached_ready4recording"
