"""Billing is exact to the micro-dollar however a session is split or redelivered."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.accrual import accrual, owed
from ledger.money import format_micros, usd_to_micros

prices = st.integers(min_value=0, max_value=100 * 1_000_000)  # up to $100/h per unit
quantities = st.integers(min_value=0, max_value=8)
durations = st.integers(min_value=0, max_value=90 * 24 * 3600)


@given(prices, quantities, durations, st.lists(st.integers(min_value=0), max_size=50))
def test_any_split_sums_to_the_single_rounding(
    price: int, quantity: int, seconds: int, cuts: list[int]
) -> None:
    points = sorted({c % (seconds + 1) for c in cuts} | {0, seconds})
    posted = sum(accrual(price, quantity, a, b) for a, b in itertools.pairwise(points))
    expected = (Decimal(price) * quantity * seconds / 3600).to_integral_value(
        rounding="ROUND_FLOOR"
    )
    assert posted == owed(price, quantity, seconds) == int(expected)


@given(prices, quantities, durations, st.lists(st.integers(min_value=0), max_size=30))
def test_redelivered_accruals_are_recognised_by_their_period(
    price: int, quantity: int, seconds: int, cuts: list[int]
) -> None:
    """A redelivered accrual covers a period already posted; keyed by (session, end second) it
    is the same posting, so summing distinct periods still gives the exact total."""
    points = sorted({c % (seconds + 1) for c in cuts} | {0, seconds})
    periods = list(itertools.pairwise(points))
    delivered = periods + periods[: len(periods) // 2]  # some arrive twice
    unique = {end: accrual(price, quantity, start, end) for start, end in delivered}
    assert sum(unique.values()) == owed(price, quantity, seconds)


@given(prices, quantities, durations, durations)
def test_accruals_never_go_negative(price: int, quantity: int, a: int, b: int) -> None:
    start, end = sorted((a, b))
    assert accrual(price, quantity, start, end) >= 0


def test_rate_card_prices_convert_exactly() -> None:
    assert usd_to_micros("0.69") == 690_000
    assert usd_to_micros("2.49") == 2_490_000
    assert format_micros(1_234_567) == "1.234567"
    assert format_micros(-5) == "-0.000005"
    with pytest.raises(ValueError, match="micro-USD"):
        usd_to_micros("0.0000001")
    with pytest.raises(ValueError):
        accrual(1, 1, 10, 5)
