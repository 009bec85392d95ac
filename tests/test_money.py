"""Money: integer micro-USD, exact conversions from the rate card's decimal strings.

(The accrual arithmetic that used to live beside it is `ledger.book`, tested in
test_ledger_book.)"""

from __future__ import annotations

import pytest

from ledger.money import format_micros, usd_to_micros


def test_rate_card_prices_convert_exactly() -> None:
    assert usd_to_micros("0.69") == 690_000
    assert usd_to_micros("2.49") == 2_490_000
    assert format_micros(1_234_567) == "1.234567"
    assert format_micros(-5) == "-0.000005"
    with pytest.raises(ValueError, match="micro-USD"):
        usd_to_micros("0.0000001")
