"""What the analytics charts show, as data for Charts.css (vendored under
static/vendor/charts.css): HTML tables that the stylesheet draws as bars and columns.

Tables, not drawings: every label is text in the page, so it wraps to fit any width instead
of being cut off, screen readers read the numbers, and nothing is placed by hand. Bar
lengths are whole percentages given as classes (``s-0`` ... ``s-100``, in
static/css/charts.css), because the CSP forbids inline styles. Colours are classes too, and
each means one thing on the whole page (``COLOURS``): a tool only in the calls chart, an
outcome the same in every chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

# Distinct colours for the tools of the calls chart; tools past these share "other tools".
TOOL_COLOURS = 5
# Every colour class of the page and its one meaning (the tool colours aside).
COLOURS = {
    "c-went-ahead": "approved, succeeded",
    "c-stopped": "rejected, failed",
    "c-unknown": "unknown outcome",
    "c-median": "median wait",
    "c-p90": "wait up to the 90th percentile",
    "c-input": "input tokens",
    "c-output": "output tokens",
    "c-other": "other tools",
}


@dataclass
class Segment:
    size: int  # percent of the chart's largest total, 0..100
    css: str
    text: str  # the value, said in words (tooltip and screen readers)


@dataclass
class BarRow:
    label: str
    note: str
    segments: list[Segment] = field(default_factory=list)


@dataclass
class BarChart:
    caption: str
    rows: list[BarRow]
    legend: list[tuple[str, str]]


def _percent(value: float, biggest: float) -> int:
    if value <= 0:
        return 0
    # A non-zero value stays visible however small.
    return max(1, min(100, round(value / biggest * 100)))


def bars(
    caption: str,
    rows: Sequence[tuple[str, Sequence[tuple[float, str, str]], str]],
    *,
    legend: list[tuple[str, str]],
) -> BarChart:
    """Horizontal stacked bars: ``(label, [(value, colour class, text)], note)`` per row."""
    biggest = max((sum(v for v, _, _ in segments) for _, segments, _ in rows), default=0) or 1
    drawn = [
        BarRow(
            label=label,
            note=note,
            segments=[Segment(_percent(v, biggest), css, text) for v, css, text in segments],
        )
        for label, segments, note in rows
    ]
    return BarChart(caption=caption, rows=drawn, legend=legend)


@dataclass
class Column:
    day: date
    label: str
    show_label: bool
    total: int
    segments: list[Segment]


@dataclass
class ColumnChart:
    caption: str
    columns: list[Column]
    legend: list[tuple[str, str]]
    peak: int


def tool_colours(names: Sequence[str]) -> dict[str, str]:
    """The first tools (by calls) get a colour each; the rest share "other tools"."""
    return {
        name: f"c-tool-{index}" if index < TOOL_COLOURS else "c-other"
        for index, name in enumerate(names)
    }


def stacked_columns(
    caption: str, days: list[date], series: dict[str, dict[date, int]]
) -> ColumnChart:
    """One column per day, one segment per tool (the busiest tools first), stacked."""
    names = sorted(series, key=lambda n: (-sum(series[n].values()), n))
    css = tool_colours(names)
    peak = max((sum(series[n].get(d, 0) for n in names) for d in days), default=0) or 1
    # Every day's label fits up to two weeks; longer windows label every 7th day.
    every = 1 if len(days) <= 14 else 7
    columns = []
    for index, day in enumerate(days):
        segments: list[Segment] = []
        others = 0
        for name in names:
            count = series[name].get(day, 0)
            if css[name] == "c-other":
                others += count
            elif count:
                segments.append(
                    Segment(_percent(count, peak), css[name], f"{name}: {count} on {day}")
                )
        if others:
            segments.append(
                Segment(_percent(others, peak), "c-other", f"other tools: {others} on {day}")
            )
        columns.append(
            Column(
                day=day,
                label=day.strftime("%m-%d"),
                show_label=(len(days) - 1 - index) % every == 0,
                total=sum(series[n].get(day, 0) for n in names),
                segments=segments,
            )
        )
    legend = [(css[n], n) for n in names if css[n] != "c-other"]
    if any(c == "c-other" for c in css.values()):
        legend.append(("c-other", COLOURS["c-other"]))
    return ColumnChart(caption=caption, columns=columns, legend=legend, peak=peak)
