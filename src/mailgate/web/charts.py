"""Server-side SVG charts for the dashboard: lines over time and horizontal bars, with axes,
ticks and labels; no JavaScript, colours from the style sheet (classes, no inline styles).

Security notes: every piece of text (titles, labels, values) goes through `escape`; labels can
come from mail (verdict details), so nothing here trusts them. Numbers are formatted by this
module, never taken as text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from markupsafe import Markup, escape

FONT = 12
_MAX_LABEL = 38


def _nice_max(value: float) -> tuple[float, float]:
    """An upper bound for an axis starting at 0, and the tick step (1, 2 or 5 x 10^n)."""
    if value <= 0:
        return 1, 1
    rough = value / 4
    magnitude = 10 ** math.floor(math.log10(rough))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= rough)
    step = max(step, 1)  # counts: whole numbers only
    return step * math.ceil(value / step), step


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL else label[: _MAX_LABEL - 1] + "…"


def _svg(title: str, width: int, height: int, body: list[str], desc: str) -> Markup:
    head = (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every part escaped above


def _empty(title: str, width: int, height: int) -> Markup:
    body = [
        f'<text class="empty" x="{width / 2:.1f}" y="{height / 2:.1f}" '
        f'text-anchor="middle">No data yet</text>'
    ]
    return _svg(title, width, height, body, "no data")


def line_chart(
    title: str,
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    width: int = 640,
    height: int = 260,
) -> Markup:
    """Lines over time (UTC hours on the x axis), one per (name, values), with a legend."""
    if not times or not series:
        return _empty(title, width, height)
    left, right, top, bottom = 48, 28, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value, step = _nice_max(max((max(v, default=0) for _, v in series), default=0))
    count = len(times)

    def x(i: int) -> float:
        return left + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / top_value

    body: list[str] = []
    tick = 0.0
    while tick <= top_value + 1e-9:
        ty = y(tick)
        body.append(
            f'<line class="grid" x1="{left}" y1="{ty:.1f}" x2="{left + plot_w}" y2="{ty:.1f}"/>'
        )
        body.append(
            f'<text class="tick" x="{left - 6}" y="{ty + 4:.1f}" '
            f'text-anchor="end">{escape(_number(tick))}</text>'
        )
        tick += step
    every = max(1, math.ceil(count / 8))
    for i, moment in enumerate(times):
        if i % every and i != count - 1:
            continue
        label = time.strftime("%H:%M", time.gmtime(moment))
        body.append(
            f'<line class="axis" x1="{x(i):.1f}" y1="{top + plot_h}" x2="{x(i):.1f}" '
            f'y2="{top + plot_h + 4}"/>'
        )
        body.append(
            f'<text class="tick" x="{x(i):.1f}" y="{top + plot_h + 18}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    body.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    body.append(
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>'
    )
    body.append(
        f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{height - 4}" '
        f'text-anchor="middle">time (UTC)</text>'
    )
    legend_x = left
    for n, (name, values) in enumerate(series):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values[:count]))
        body.append(f'<polyline class="line series-{n % 6}" points="{points}"/>')
        for i, v in enumerate(values[:count]):
            body.append(
                f'<circle class="dot series-{n % 6}" cx="{x(i):.1f}" cy="{y(v):.1f}" '
                f'r="2.5"><title>{escape(name)}: {escape(_number(v))}</title></circle>'
            )
        body.append(
            f'<rect class="swatch series-{n % 6}" x="{legend_x}" y="8" width="12" height="12"/>'
        )
        body.append(
            f'<text class="legend" x="{legend_x + 16}" y="18">{escape(_short(name))} '
            f"({escape(_number(sum(values)))})</text>"
        )
        legend_x += 28 + FONT * len(_short(name)) // 2 + 60
    desc = "; ".join(f"{name}: {_number(sum(values))}" for name, values in series)
    return _svg(title, width, height, body, desc)


def bar_chart(
    title: str, data: Sequence[tuple[str, float]], *, width: int = 640, unit: str = ""
) -> Markup:
    """Horizontal bars, one per (label, value), labels on the left, values at the bars' ends."""
    if not data:
        return _empty(title, width, 120)
    row = 26
    label_w, right, top, bottom = 230, 56, 8, 34
    plot_w = width - label_w - right
    height = top + row * len(data) + bottom
    top_value, step = _nice_max(max(v for _, v in data))
    body: list[str] = []
    tick = 0.0
    plot_bottom = top + row * len(data)
    while tick <= top_value + 1e-9:
        tx = label_w + plot_w * tick / top_value
        body.append(
            f'<line class="grid" x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{plot_bottom}"/>'
        )
        body.append(
            f'<text class="tick" x="{tx:.1f}" y="{plot_bottom + 16}" '
            f'text-anchor="middle">{escape(_number(tick))}</text>'
        )
        tick += step
    for n, (label, value) in enumerate(data):
        by = top + n * row
        bar_w = plot_w * value / top_value
        body.append(
            f'<text class="label" x="{label_w - 8}" y="{by + row / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(_short(label))}<title>{escape(label)}</title>'
            "</text>"
        )
        body.append(
            f'<rect class="bar series-{n % 6}" x="{label_w}" y="{by + 4}" '
            f'width="{max(bar_w, 1):.1f}" height="{row - 8}"><title>{escape(label)}: '
            f"{escape(_number(value))}{escape(unit)}</title></rect>"
        )
        body.append(
            f'<text class="value" x="{label_w + bar_w + 6:.1f}" '
            f'y="{by + row / 2 + 4:.1f}">{escape(_number(value))}</text>'
        )
    body.append(f'<line class="axis" x1="{label_w}" y1="{top}" x2="{label_w}" y2="{plot_bottom}"/>')
    body.append(
        f'<line class="axis" x1="{label_w}" y1="{plot_bottom}" x2="{label_w + plot_w}" '
        f'y2="{plot_bottom}"/>'
    )
    if unit:
        body.append(
            f'<text class="axis-title" x="{label_w + plot_w / 2:.1f}" y="{height - 2}" '
            f'text-anchor="middle">{escape(unit.strip())}</text>'
        )
    desc = "; ".join(f"{label}: {_number(value)}" for label, value in data)
    return _svg(title, width, height, body, desc)
