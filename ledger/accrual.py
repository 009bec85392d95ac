"""Per-second accrual that rounds once: however a usage session is split into accrual periods,
the postings add up to floor(price x quantity x seconds), exactly.

Each accrual posts the difference between what is owed for the whole elapsed time and what was
already posted, so rounding never accumulates (the remainder is carried, not dropped)."""

from __future__ import annotations

from ledger.money import SECONDS_PER_HOUR


def owed(price_per_hour_micros: int, quantity: int, seconds: int) -> int:
    """floor(price/h x quantity x seconds) in micro-USD, computed in integers."""
    if price_per_hour_micros < 0 or quantity < 0 or seconds < 0:
        raise ValueError("price, quantity and seconds must not be negative")
    return (price_per_hour_micros * quantity * seconds) // SECONDS_PER_HOUR


def accrual(price_per_hour_micros: int, quantity: int, billed_until: int, now: int) -> int:
    """What to post for the session's seconds [billed_until, now), measured from its start."""
    if now < billed_until:
        raise ValueError("an accrual cannot end before the last one")
    return owed(price_per_hour_micros, quantity, now) - owed(
        price_per_hour_micros, quantity, billed_until
    )
