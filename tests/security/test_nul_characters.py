"""A NUL character (U+0000) in a customer's string is a 400 naming the field, and can never stop a
projection.

Before, `POST /templates` with `"name": "a\\u0000b"` answered 201; the templates projection then
could not store the state (PostgreSQL's jsonb refuses U+0000) and stayed behind that event, so no
customer's later template appeared. A NUL in a billing filter answered 500."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from projections.aggregate_table import jsonb_text
from services.api.json_body import nul_path
from tests.api_helpers import assert_error, own_templates, template_body, user_client
from tests.servers import Stack


def test_a_nul_in_a_body_is_a_400_naming_the_field(stack: Stack) -> None:
    with user_client(stack) as client:
        for body, named in (
            (template_body(name="a\u0000b"), "`name`"),
            (template_body(env={"TOKEN": "x\u0000y"}), "`env.TOKEN`"),
            (template_body(env={"TO\u0000KEN": "x"}), "`env.TO\u0000KEN`"),
            (template_body(ports=["8888/http", "22\u0000/tcp"]), "`ports[1]`"),
        ):
            assert_error(client.post("/templates", json=body), 400, named)
        assert_error(client.post("/api-keys", json={"name": "k\u0000"}), 400, "`name`")
        # The text of an escape (a backslash, then u0000) is not a NUL: it is kept as written.
        literal = template_body(readme="write \\u0000 for NUL")
        created = client.post("/templates", json=literal)
        assert created.status_code == 201, created.text
        assert created.json()["readme"] == "write \\u0000 for NUL"
        # Nothing was held up: the template just made is listed.
        assert created.json()["id"] in {t["id"] for t in own_templates(client)}


@given(st.text())
def test_a_read_models_jsonb_never_holds_nul_and_keeps_everything_else(value: str) -> None:
    encoded = msgspec.json.encode({"value": value, "key\u0000": [value]}).decode()
    stored = msgspec.json.decode(jsonb_text(encoded))
    kept = value.replace("\u0000", "\ufffd")
    assert stored == {"value": kept, "key\ufffd": [kept]}


def test_nul_path_names_where_it_is() -> None:
    assert nul_path({"a": [{"b": "ok"}, {"c": "x\u0000"}]}) == "a[1].c"
    assert nul_path({"a": "fine", "b": [1, 2.5, None, True]}) is None
    assert nul_path("\u0000") == ""
