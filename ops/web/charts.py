"""Files received, sent and in error per hour (last 24 h) and per day (last 30 days), as SVG geometry.

:func:`hourly` and :func:`daily` turn :func:`engine.records.activity` buckets into a :class:`Chart`:
slots along the x axis, three bars in each (received, sent, errors), y grid lines at round
numbers. The template draws it as plain SVG (no script, no library): a picture, with a tooltip
per slot (SVG ``<title>``) for the exact numbers. Units are the SVG's viewBox units.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ops.web.queries import Bucket

SERIES = ("received", "sent", "errors")
WIDTH, HEIGHT = 760, 230
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 12, 26        # plot margins: y labels left, x labels below


@dataclass
class Bar:
    series: str
    value: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class Slot:
    start: datetime                 # local time
    label: str                      # x-axis label ("" for most slots)
    title: str                      # tooltip
    x: float                        # left edge of the slot
    w: float
    bars: list[Bar] = field(default_factory=list)


@dataclass
class Chart:
    title: str
    slots: list[Slot]
    grid: list[tuple[float, str]]   # (y, label) of each horizontal grid line
    totals: dict[str, int]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    bottom_edge: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not any(self.totals.values())


def nice_ceiling(value: int) -> tuple[int, int]:
    """A round top for the y axis at or above ``value`` and the step of its 4-5 grid lines."""
    if value <= 4:
        return 4, 1
    raw = value / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    step = max(int(step), 1)
    return step * math.ceil(value / step), step


def _count(n: int) -> str:
    return f"{n / 1000:.1f}k".replace(".0k", "k") if n >= 10_000 else f"{n:,}"


def build(title: str, starts: list[datetime], values: list[Bucket], labels: list[str],
          titles: list[str]) -> Chart:
    """A chart of one slot per start, bars from ``values`` (same order)."""
    top_value = max([max(v.received, v.sent, v.errors) for v in values] + [0])
    ymax, step = nice_ceiling(top_value)
    plot_h = HEIGHT - TOP - BOTTOM
    plot_w = WIDTH - LEFT - RIGHT
    slot_w = plot_w / max(len(starts), 1)
    bar_w = slot_w * 0.78 / len(SERIES)
    slots = []
    for i, (start, v) in enumerate(zip(starts, values, strict=True)):
        x = LEFT + i * slot_w
        slot = Slot(start, labels[i], titles[i], x, slot_w)
        for j, series in enumerate(SERIES):
            value = getattr(v, series)
            if value:
                h = max(plot_h * value / ymax, 1.5)       # a single file still shows
                slot.bars.append(Bar(series, value, x + slot_w * 0.11 + j * bar_w, TOP + plot_h - h, bar_w - 0.8, h))
        slots.append(slot)
    grid = [(TOP + plot_h - plot_h * k / ymax, _count(k)) for k in range(0, ymax + 1, step)]
    totals = {s: sum(getattr(v, s) for v in values) for s in SERIES}
    return Chart(title, slots, grid, totals)


def hourly(buckets: Mapping[datetime, Bucket], now: datetime) -> Chart:
    """The 24 hours up to and including the current one (local ``now``)."""
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    starts = [this_hour - timedelta(hours=23 - i) for i in range(24)]
    values = [buckets.get(h) or Bucket(h) for h in starts]
    labels = [f"{h:%H}:00" if h.hour % 3 == 0 else "" for h in starts]
    titles = [f"{h:%a %H}:00-{h.hour + 1:02d}:00: {v.received} received, {v.sent} sent, {v.errors} errors"
              for h, v in zip(starts, values, strict=True)]
    return build("Last 24 hours", starts, values, labels, titles)


def daily(buckets: Mapping[datetime, Bucket], now: datetime) -> Chart:
    """The 30 days up to and including today (local ``now``), summed from hourly buckets."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=29 - i) for i in range(30)]
    days = {d: Bucket(d) for d in starts}
    for hour, b in buckets.items():
        day = days.get(hour.replace(hour=0))
        if day is not None:
            day.received += b.received
            day.sent += b.sent
            day.errors += b.errors
    values = [days[d] for d in starts]
    labels = [f"{d:%b} {d.day}" if i % 5 == 4 or i == 29 else "" for i, d in enumerate(starts)]
    titles = [f"{d:%a %b} {d.day}: {v.received} received, {v.sent} sent, {v.errors} errors"
              for d, v in zip(starts, values, strict=True)]
    return build("Last 30 days", starts, values, labels, titles)
