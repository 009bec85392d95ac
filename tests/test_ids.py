"""Derived ids are stored (idempotency keys, event ids, a user's id from their email): the fast
uuid5 must give exactly the stdlib's UUIDv5 for every name, or a retried command would no longer
find what its first try did."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.ids import NAMESPACE, derived_id


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_derived_ids_are_the_stdlib_uuid5_of_the_joined_parts(parts: list[str]) -> None:
    expected = uuid.uuid5(uuid.UUID(NAMESPACE), "\x1f".join(parts))
    assert derived_id(*parts) == str(expected)


def test_a_derived_id_known_from_before_is_unchanged() -> None:
    assert derived_id("user", "ada@example.com") == str(
        uuid.uuid5(uuid.UUID("6f1d7c62-3a4e-4b8f-9a57-0d3c1e2f4a5b"), "user\x1fada@example.com")
    )


def test_a_name_utf_8_cannot_hold_fails_as_the_stdlib_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        derived_id("key", "\ud800")
