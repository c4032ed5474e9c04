"""The charts as inline SVG: no script, no chart library, nothing fetched.

The learning curve (:func:`learning_curve`), a mouse's weights with the expected weight and
the policy's attention and warning thresholds (:func:`weight_chart`), and its water per day,
earned and supplement, against the day's requirement (:func:`water_chart`).

The learning curve: accuracy per session (0 to 100 %), one point per judged session, on bands
that show the stage each session ran; a session's tooltip (``<title>``) gives its number,
stage, trials, accuracy and the decision after it. Every text from data is escaped
(markupsafe), so a hostile stage name is shown, never run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from markupsafe import Markup, escape

from shaping.services.web.queries import SessionPoint, WaterDay, WeightChart

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 14, 30
PALETTE = ("#e8f0fe", "#fef7e0", "#e6f4ea", "#fce8e6", "#f3e8fd", "#e0f7fa")


def _x(index: int, count: int) -> float:
    span = WIDTH - LEFT - RIGHT
    return LEFT + (span * (index + 0.5) / max(count, 1))


def _y(accuracy: float) -> float:
    return TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - max(0.0, min(1.0, accuracy)))


def learning_curve(sessions: Sequence[SessionPoint]) -> Markup:
    """The SVG of the sessions' accuracy (an empty-state message when there is none)."""
    count = len(sessions)
    parts = [
        f'<svg class="curve" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        "<title>Learning curve: accuracy per session</title>",
    ]
    if count == 0:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no session yet</text>'
        )
        parts.append("</svg>")
        return Markup("".join(parts))
    # stage bands
    step = (WIDTH - LEFT - RIGHT) / count
    colours: dict[str, str] = {}
    start = 0
    for i in range(1, count + 1):
        if i == count or sessions[i].stage != sessions[start].stage:
            stage = sessions[start].stage or "?"
            colour = colours.setdefault(stage, PALETTE[len(colours) % len(PALETTE)])
            x0 = LEFT + step * start
            parts.append(
                f'<rect class="band" x="{x0:.1f}" y="{TOP}" width="{step * (i - start):.1f}" '
                f'height="{HEIGHT - TOP - BOTTOM}" fill="{colour}"><title>{escape(stage)}'
                "</title></rect>"
            )
            parts.append(
                f'<text class="band-label" x="{x0 + 3:.1f}" y="{TOP + 11}">{escape(stage)}</text>'
            )
            start = i
    # axes and grid
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _y(level)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{level:.0%}</text>"
        )
    parts.append(
        f'<text class="axis" x="{(WIDTH + LEFT) / 2:.0f}" y="{HEIGHT - 6}" '
        'text-anchor="middle">session</text>'
    )
    # the curve
    judged = [(i, s) for i, s in enumerate(sessions) if s.accuracy is not None]
    if len(judged) > 1:
        points = " ".join(f"{_x(i, count):.1f},{_y(s.accuracy or 0.0):.1f}" for i, s in judged)
        parts.append(f'<polyline class="line" points="{points}"/>')
    for i, s in judged:
        accuracy = s.accuracy or 0.0
        tip = (
            f"session {s.number} at {s.stage or '?'}: {s.n_trials or 0} trials, "
            f"{accuracy:.0%} correct; decision {s.decision or 'none yet'}"
        )
        parts.append(
            f'<circle class="point" cx="{_x(i, count):.1f}" cy="{_y(accuracy):.1f}" r="3.5">'
            f"<title>{escape(tip)}</title></circle>"
        )
    if count <= 30:
        for i, s in enumerate(sessions):
            parts.append(
                f'<text class="axis" x="{_x(i, count):.1f}" y="{HEIGHT - BOTTOM + 14}" '
                f'text-anchor="middle">{s.number}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


# -- welfare ---------------------------------------------------------------------------------

W_HEIGHT = 260


def _svg_open(kind: str, title: str, height: int = W_HEIGHT) -> list[str]:
    return [
        f'<svg class="curve {kind}" role="img" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]


def _empty(parts: list[str], text: str, height: int = W_HEIGHT) -> Markup:
    parts.append(
        f'<text x="{WIDTH / 2}" y="{height / 2}" text-anchor="middle">{escape(text)}</text></svg>'
    )
    return Markup("".join(parts))


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values from ``low`` to ``high``."""
    span = max(high - low, 1e-9)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def weight_chart(chart: WeightChart) -> Markup:
    """The SVG of a mouse's weights, with the expected weight and the attention and warning
    thresholds of the restriction in force as step lines (a message when never weighed)."""
    parts = _svg_open("weight", "Weight: grams per weighing, expected and thresholds")
    lines = [line for line in (chart.expected, chart.attention, chart.warning) if line]
    moments = [p.at for p in chart.weights] + [at for line in lines for at, _ in line.points]
    grams = [p.grams for p in chart.weights] + [g for line in lines for _, g in line.points]
    if not chart.weights:
        return _empty(parts, "not weighed yet")
    t0, t1 = min(moments), max(moments)
    if (t1 - t0).total_seconds() < 3600:
        t0, t1 = t0 - timedelta(hours=12), t1 + timedelta(hours=12)
    low, high = min(grams), max(grams)
    pad = max((high - low) * 0.1, 0.5)
    low, high = low - pad, high + pad
    bottom = W_HEIGHT - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (at - t0).total_seconds() / (t1 - t0).total_seconds()

    def y(value: float) -> float:
        return TOP + (bottom - TOP) * (1.0 - (value - low) / (high - low))

    for level in _ticks(low, high):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" '
            f'y2="{y(level):.1f}"/><text class="axis" x="{LEFT - 6}" y="{y(level) + 4:.1f}" '
            f'text-anchor="end">{level:g}</text>'
        )
    days = sorted({at.astimezone(UTC).date() for at in moments})
    every = max(1, math.ceil(len(days) / 8))
    for day in days[::every]:
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        if t0 <= at <= t1:
            where = min(max(x(at), LEFT + 16), WIDTH - RIGHT - 16)
            parts.append(
                f'<text class="axis" x="{where:.1f}" y="{bottom + 14}" text-anchor="middle">'
                f"{day.strftime('%m-%d')}</text>"
            )
    for line, css in (
        (chart.expected, "expected"),
        (chart.attention, "attention"),
        (chart.warning, "warning"),
    ):
        if line is None or not line.points:
            continue
        steps: list[str] = []
        for i, (at, value) in enumerate(line.points):
            if i:
                steps.append(f"{x(at):.1f},{y(line.points[i - 1][1]):.1f}")
            steps.append(f"{x(at):.1f},{y(value):.1f}")
        steps.append(f"{WIDTH - RIGHT},{y(line.points[-1][1]):.1f}")  # in force until now
        parts.append(
            f'<polyline class="limit {css}" points="{" ".join(steps)}">'
            f"<title>{escape(line.name)}</title></polyline>"
        )
        last = line.points[-1][1]
        parts.append(
            f'<text class="limit-label {css}" x="{WIDTH - RIGHT - 2}" y="{y(last) - 3:.1f}" '
            f'text-anchor="end">{escape(line.name)} {last:.1f} g</text>'
        )
    if len(chart.weights) > 1:
        points = " ".join(f"{x(p.at):.1f},{y(p.grams):.1f}" for p in chart.weights)
        parts.append(f'<polyline class="line" points="{points}"/>')
    for p in chart.weights:
        by = f" by {p.by}" if p.by else ""
        tip = f"{_when(p.at)}: {p.grams:g} g{by}{' (confirmed)' if p.confirmed else ''}"
        parts.append(
            f'<circle class="point weight" cx="{x(p.at):.1f}" cy="{y(p.grams):.1f}" r="4">'
            f"<title>{escape(tip)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def water_chart(days: Sequence[WaterDay]) -> Markup:
    """The SVG of a mouse's water per lab day: earned and supplement stacked, the day's
    requirement as a mark (a message when no water was recorded)."""
    parts = _svg_open("water", "Water per day: earned and supplement, and the requirement")
    if not days:
        return _empty(parts, "no water recorded")
    bottom = W_HEIGHT - BOTTOM
    high = max([d.given_ml for d in days] + [d.required_ml or 0.0 for d in days] + [1.0]) * 1.15

    def y(value: float) -> float:
        return TOP + (bottom - TOP) * (1.0 - value / high)

    for level in _ticks(0.0, high):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" '
            f'y2="{y(level):.1f}"/><text class="axis" x="{LEFT - 6}" y="{y(level) + 4:.1f}" '
            f'text-anchor="end">{level:g}</text>'
        )
    step = (WIDTH - LEFT - RIGHT) / len(days)
    width = min(step * 0.6, 48)
    for i, d in enumerate(days):
        cx = LEFT + step * (i + 0.5)
        x0 = cx - width / 2
        base = 0.0
        for value, css in ((d.earned_ml, "earned"), (d.supplement_ml, "supplement")):
            if value > 0:
                parts.append(
                    f'<rect class="bar {css}" x="{x0:.1f}" y="{y(base + value):.1f}" '
                    f'width="{width:.1f}" height="{y(base) - y(base + value):.1f}">'
                    f"<title>{d.day.isoformat()}: {value:g} mL {css}</title></rect>"
                )
                base += value
        if d.free_access:
            parts.append(
                f'<text class="axis free" x="{cx:.1f}" y="{y(base) - 4:.1f}" '
                'text-anchor="middle">free access</text>'
            )
        if d.required_ml is not None:
            parts.append(
                f'<line class="required" x1="{x0 - 4:.1f}" x2="{x0 + width + 4:.1f}" '
                f'y1="{y(d.required_ml):.1f}" y2="{y(d.required_ml):.1f}">'
                f"<title>{d.day.isoformat()}: {d.required_ml:.2f} mL required</title></line>"
            )
        parts.append(
            f'<text class="axis" x="{cx:.1f}" y="{bottom + 14}" text-anchor="middle">'
            f"{d.day.strftime('%m-%d')}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
