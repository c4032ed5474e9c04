"""``shaping plot MOUSE``: a mouse's learning curve and stage timeline as one PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.pyplot as plt
import pandas as pd

from services.operator.errors import OperatorError

_ROLLING = 3
"""Sessions in the rolling mean drawn over the per-session accuracy."""


def stage_order(sessions: pd.DataFrame, history: pd.DataFrame) -> list[str]:
    """Stages in the order the mouse first met them (so a progression climbs the y axis)."""
    order: list[str] = []
    for stage in [
        *history.get("stage", []),
        *sessions.get("stage", []),
        *sessions.get("next_stage", []),
    ]:
        if isinstance(stage, str) and stage not in order:
            order.append(stage)
    return order


def plot_mouse(
    mouse_id: str, sessions: pd.DataFrame, history: pd.DataFrame, out: Path, dpi: int = 110
) -> Path:
    """Draws accuracy per session (coloured by stage, with a rolling mean) above the stage of
    each session, and writes a PNG.

    Args:
        mouse_id: the mouse (for the title).
        sessions: its rows of the sessions frame, oldest first.
        history: its rows of the stage history.
        out: the PNG to write (parent folders are created).
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        OperatorError: when the mouse has no session yet.
    """
    ran = sessions.dropna(subset=["started_at"]).reset_index(drop=True)
    if ran.empty:
        raise OperatorError(f"{mouse_id} has no session yet: nothing to plot")
    number = pd.Series(range(1, len(ran) + 1), name="session")
    stages = stage_order(ran, history)
    level = {stage: i for i, stage in enumerate(stages)}
    colours = plt.get_cmap("tab10")

    fig, (curve, timeline) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    curriculum = ran["curriculum_name"].dropna()
    title = mouse_id + (f" ({curriculum.iloc[-1]})" if not curriculum.empty else "")
    fig.suptitle(f"{title}: learning curve and stage timeline")

    accuracy = ran["accuracy"].astype(float)
    for stage in stages:
        on_stage = ran["stage"] == stage
        if on_stage.any():
            curve.scatter(
                number[on_stage], accuracy[on_stage], color=colours(level[stage] % 10), label=stage
            )
    curve.plot(
        number,
        accuracy.rolling(_ROLLING, min_periods=1).mean(),
        color="black",
        linewidth=1.2,
        label=f"mean of last {_ROLLING}",
    )
    curve.set_ylabel("accuracy")
    curve.set_ylim(-0.02, 1.02)
    curve.grid(alpha=0.3)
    curve.legend(loc="lower right", fontsize="small")

    ys = [level[stage] for stage in ran["stage"]]
    timeline.step(number, ys, where="mid", color="tab:blue")
    timeline.scatter(number, ys, color=[colours(y % 10) for y in ys], zorder=3)
    timeline.set_yticks(range(len(stages)), stages)
    timeline.set_ylim(-0.5, len(stages) - 0.5)
    timeline.set_xlabel("session")
    timeline.set_ylabel("stage")
    timeline.grid(alpha=0.3)
    timeline.xaxis.get_major_locator().set_params(integer=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out
