"""Money is integer micro-USD. Never floats, in storage or arithmetic."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_USD = 1_000_000
SECONDS_PER_HOUR = 3600


def usd_to_micros(usd: str | Decimal) -> int:
    """A price as written on a rate card ("0.69") to micro-USD; refuses sub-micro precision."""
    amount = Decimal(usd) * MICROS_PER_USD
    rounded = amount.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    if rounded != amount:
        raise ValueError(f"{usd} USD is not a whole number of micro-USD")
    return int(rounded)


def format_micros(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"
