"""Findings 2 and 3 (issue 7), at the API: an image name must be a reference by name (not an image
ID), on a registry the platform may contact. Refused with a 400 naming `imageName`, on every
route that takes one. The simulated stack contacts no registry; only loopback names appear."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.api_helpers import assert_error, template_body, user_client
from tests.instance_helpers import BUSYBOX_TEMPLATE, instance
from tests.servers import Stack

IMAGE_ID = "706e82d82624" + "0" * 52

REFUSED = [
    "127.0.0.1:18902/probe:1",
    "localhost:18902/probe:1",
    "[::1]:18902/probe:1",
    "127.1:18902/probe:1",
    "sha256:" + IMAGE_ID,
    IMAGE_ID,
    IMAGE_ID[:12],
    "Local/Busybox",
]


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with user_client(stack) as c:
        yield c


@pytest.mark.parametrize("image", REFUSED)
def test_a_template_cannot_name_a_refused_image(client: httpx.Client, image: str) -> None:
    response = client.post("/templates", json=template_body(imageName=image))
    assert_error(response, 400, "imageName")

    created = client.post("/templates", json=template_body(imageName="local/busybox:latest"))
    assert created.status_code == 201, created.text
    response = client.patch(f"/templates/{created.json()['id']}", json={"imageName": image})
    assert_error(response, 400, "imageName")


def test_the_messages_say_what_to_do(client: httpx.Client) -> None:
    message = assert_error(
        client.post("/templates", json=template_body(imageName="127.0.0.1:18902/probe:1")),
        400,
        "imageName",
        "127.0.0.1:18902",
        "not allowed",
    )
    assert "operator" in message
    message = assert_error(
        client.post("/templates", json=template_body(imageName="sha256:" + IMAGE_ID)),
        400,
        "imageName",
        "image ID",
    )
    assert "repository and tag" in message


def test_an_instance_cannot_be_changed_to_a_refused_image(client: httpx.Client) -> None:
    with instance(client, templateId=BUSYBOX_TEMPLATE) as created:
        for image in ("127.0.0.1:18902/probe:1", IMAGE_ID[:12], "sha256:" + IMAGE_ID):
            response = client.patch(f"/instances/{created['id']}", json={"imageName": image})
            assert_error(response, 400, "imageName")
        response = client.patch(
            f"/instances/{created['id']}", json={"imageName": "registry.example.com/team/app:1"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["imageName"] == "registry.example.com/team/app:1"


def test_names_on_public_registries_are_accepted(client: httpx.Client) -> None:
    for image in ("busybox", "nvcr.io/nvidia/pytorch:2.1.0-py3", "ghcr.io/a/b@sha256:" + "a" * 64):
        response = client.post("/templates", json=template_body(imageName=image))
        assert response.status_code == 201, response.text
        assert response.json()["imageName"] == image
