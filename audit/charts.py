"""Chart geometry for server-rendered SVG: no script, no CDN, nothing inline for the CSP.

The functions here only compute rectangles and labels; the templates draw them with
``<rect>``/``<text>`` (colours come from classes in app.css), and Django escapes every
label, which may be a tool's, an agent's or a person's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

PALETTE_SIZE = 8


@dataclass
class Segment:
    x: float
    width: float
    css: str
    title: str


@dataclass
class Row:
    label: str
    y: float
    total: float
    note: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def text_y(self) -> float:
        return self.y + 15

    @property
    def end_x(self) -> float:
        return max((s.x + s.width for s in self.segments), default=0) + 6


@dataclass
class HBarChart:
    width: int
    height: int
    label_width: int
    rows: list[Row]
    legend: list[tuple[str, str]]


def hbars(
    rows: Sequence[tuple[str, Sequence[tuple[float, str, str]], str]],
    *,
    legend: list[tuple[str, str]] | None = None,
    width: int = 640,
    label_width: int = 180,
    row_height: int = 24,
) -> HBarChart:
    """Horizontal stacked bars: ``(label, [(value, css class, tooltip)], note)`` per row."""
    scale_width = width - label_width - 90
    biggest = max((sum(v for v, _, _ in segments) for _, segments, _ in rows), default=0) or 1
    drawn = []
    for index, (label, segments, note) in enumerate(rows):
        row = Row(
            label=label, y=index * row_height, total=sum(v for v, _, _ in segments), note=note
        )
        x = float(label_width)
        for value, css, title in segments:
            bar = value / biggest * scale_width
            row.segments.append(
                Segment(x=x, width=max(bar, 0.5 if value else 0), css=css, title=title)
            )
            x += bar
        drawn.append(row)
    return HBarChart(
        width=width,
        height=max(len(rows), 1) * row_height,
        label_width=label_width,
        rows=drawn,
        legend=legend or [],
    )


@dataclass
class Column:
    x: float
    label: str
    segments: list[tuple[float, float, str, str]]  # y, height, css, title


@dataclass
class ColumnChart:
    width: int
    height: int
    plot_height: int
    columns: list[Column]
    legend: list[tuple[str, str]]
    peak: int


def stacked_columns(
    days: list[date], series: dict[str, dict[date, int]], *, width: int = 640, height: int = 220
) -> ColumnChart:
    """One column per day, one coloured segment per series (a tool), stacked."""
    names = sorted(series)
    css = {name: f"series-{i % PALETTE_SIZE}" for i, name in enumerate(names)}
    plot_height = height - 24
    peak = max((sum(series[n].get(d, 0) for n in names) for d in days), default=0) or 1
    step = (width - 40) / max(len(days), 1)
    columns = []
    for index, day in enumerate(days):
        y = float(plot_height)
        segments = []
        for name in names:
            count = series[name].get(day, 0)
            if not count:
                continue
            bar = count / peak * (plot_height - 10)
            y -= bar
            segments.append((y, bar, css[name], f"{name}: {count} on {day.isoformat()}"))
        columns.append(Column(x=40 + index * step, label=day.strftime("%m-%d"), segments=segments))
    return ColumnChart(
        width=width,
        height=height,
        plot_height=plot_height,
        columns=columns,
        legend=[(css[n], n) for n in names],
        peak=peak,
    )
