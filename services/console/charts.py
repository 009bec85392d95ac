"""Bar charts drawn on the server as SVG: no chart library, nothing to download, readable without
JavaScript. Each chart comes with the same figures as a table for screen readers and for copying.

Amounts are summed from the billing summaries' records (micro-USD, exact) per bucket start."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

WIDTH = 600
HEIGHT = 160
GAP = 2
MAX_BAR = 40


@dataclass(frozen=True)
class Bar:
    label: str
    amount_micros: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    total_micros: int
    peak_micros: int
    width: int = WIDTH
    height: int = HEIGHT


def totals_by_time(records: Iterable[tuple[datetime, int]]) -> dict[datetime, int]:
    totals: dict[datetime, int] = {}
    for time, amount in records:
        totals[time] = totals.get(time, 0) + amount
    return totals


def daily(records: Iterable[tuple[datetime, int]], end: datetime, days: int = 30) -> list[Bar]:
    """One bar per UTC day for the `days` days up to `end`'s day, empty days included."""
    totals = totals_by_time(records)
    last = end.replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [last - timedelta(days=days - 1 - i) for i in range(days)]
    return _bars([(s.strftime("%b %d"), totals.get(s, 0)) for s in starts])


def by_bucket(records: Iterable[tuple[datetime, int]], label_format: str) -> list[Bar]:
    totals = totals_by_time(records)
    return _bars([(t.strftime(label_format), totals[t]) for t in sorted(totals)])


def _bars(points: list[tuple[str, int]]) -> list[Bar]:
    if not points:
        return []
    peak = max((amount for _, amount in points), default=0) or 1
    slot = WIDTH / len(points)
    bars = []
    for index, (label, amount) in enumerate(points):
        height = (HEIGHT - 4) * amount / peak
        bars.append(
            Bar(
                label=label,
                amount_micros=amount,
                x=round(index * slot + GAP / 2, 2),
                y=round(HEIGHT - height, 2),
                # A few bars stay bars, not a filled panel.
                width=round(min(max(slot - GAP, 1), MAX_BAR), 2),
                height=round(height, 2),
            )
        )
    return bars


def chart(title: str, bars: list[Bar]) -> Chart:
    return Chart(
        title=title,
        bars=bars,
        total_micros=sum(b.amount_micros for b in bars),
        peak_micros=max((b.amount_micros for b in bars), default=0),
    )
