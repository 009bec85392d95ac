"""Form posts become the REST API's own bodies, and their problems read as the API words them,
naming the form's field."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from services.api.api_keys import ApiKeyIn
from services.api.instances import InstanceIn
from services.console.forms import body_of, env_of, lines_of
from services.errors import BadRequest


def _refusal(values: Mapping[str, object], kind: type[object]) -> str:
    with pytest.raises(BadRequest) as caught:
        body_of(values, kind)
    return caught.value.message


def test_a_blank_required_field_is_named() -> None:
    assert _refusal({}, ApiKeyIn) == "field `name`: required; fill it in"


def test_a_wrong_value_is_named_as_the_api_names_it() -> None:
    form = {"name": "x", "gpuTypeId": "g", "templateId": "t", "gpuCount": "many"}
    assert _refusal(form, InstanceIn) == "field `gpuCount`: Expected `int`, got `str`"


def test_form_text_becomes_the_bodys_numbers_lists_and_env() -> None:
    body = body_of({"name": "x", "gpuTypeId": "g", "templateId": "t", "gpuCount": "2"}, InstanceIn)
    assert body.gpu_count == 2
    assert lines_of("8888/http, 22/tcp\n 80/http ") == ["8888/http", "22/tcp", "80/http"]
    assert env_of("A=1\n\nB = two=2\n") == {"A": "1", "B": " two=2"}
    with pytest.raises(BadRequest, match="field `env`: line 2 is not KEY=value"):
        env_of("A=1\nNOPE")


def test_a_nul_character_is_refused_naming_the_field() -> None:
    form = {"name": "x", "gpuTypeId": "g", "templateId": "t", "env": {"A": "1\u0000"}}
    assert _refusal(form, InstanceIn).startswith("field `env.A`: holds a NUL character")
