"""Finding 3 (issue 7), the pure half: image references read with distribution/reference's
grammar, and which registries they may name. Nothing here contacts anything: the private
addresses below are strings handed to pure functions, never to Docker."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.agent.registry_credentials import registry_of
from services.images.reference import (
    NAME_TOTAL_LENGTH_MAX,
    ImageReference,
    InvalidReference,
    parse,
)
from services.images.registry_policy import (
    RegistryPolicy,
    RegistryRefused,
    address_literal,
    refused_address,
)

# -- the grammar ---------------------------------------------------------------------------------

alphanumeric = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])
path_component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest),
    alphanumeric,
    st.lists(st.tuples(separator, alphanumeric), max_size=2),
)
domain_component = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
# A registry the daemon recognises as one: a dot, a port, or "localhost".
domain = st.one_of(
    st.builds(
        lambda parts, port: ".".join(parts) + (f":{port}" if port else ""),
        st.lists(domain_component, min_size=2, max_size=3),
        st.none() | st.integers(1, 65535),
    ),
    st.builds(lambda c, port: f"{c}:{port}", domain_component, st.integers(1, 65535)),
    st.just("localhost"),
)
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digest = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@given(
    domain, st.lists(path_component, min_size=1, max_size=3), st.none() | tag, st.none() | digest
)
def test_a_reference_with_a_registry_round_trips(
    domain_text: str, path: list[str], tag_text: str | None, digest_text: str | None
) -> None:
    name = f"{domain_text}/{'/'.join(path)}"
    text = name + (f":{tag_text}" if tag_text else "") + (f"@{digest_text}" if digest_text else "")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        with pytest.raises(InvalidReference):
            parse(text)
        return

    ref = parse(text)

    assert ref.domain == domain_text
    assert ref.path == "/".join(path)
    assert (ref.tag, ref.digest) == (tag_text, digest_text)
    assert (
        parse(ref.canonical())
        == parse(ref.familiar())
        == (ref if tag_text or digest_text else ImageReference(ref.domain, ref.path, "latest"))
    )


@given(st.lists(path_component, min_size=1, max_size=3), st.none() | tag)
def test_a_reference_without_a_registry_is_docker_hub(
    path: list[str], tag_text: str | None
) -> None:
    if len(path) > 1 and "." in path[0]:
        assert parse("/".join(path)).domain == path[0]  # a dot makes it a registry
        return
    text = "/".join(path) + (f":{tag_text}" if tag_text else "")
    try:
        ref = parse(text)
    except InvalidReference as exc:
        # Only what the daemon would take for an image ID is refused.
        assert "image ID" in str(exc)
        assert len(path) == 1 and not tag_text
        return
    assert ref.domain == "docker.io"
    expected = "/".join(path) if len(path) > 1 else f"library/{path[0]}"
    assert ref.path == expected
    assert ref.familiar_repository == "/".join(path)
    assert parse(ref.canonical()) == parse(ref.familiar())


@given(st.text(max_size=80))
def test_any_string_parses_to_a_reference_that_re_parses_or_is_refused(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReference as exc:
        assert str(exc)
        return
    assert parse(ref.canonical()) == parse(ref.canonical()) is not None
    assert ref.path == ref.path.lower()
    assert parse(ref.canonical()).repository == ref.repository


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", None, None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("local/busybox:latest", "docker.io", "local/busybox", "latest", None),
        ("index.docker.io/foo/bar", "docker.io", "foo/bar", None, None),
        ("nvcr.io/nvidia/pytorch:2.1.0-py3", "nvcr.io", "nvidia/pytorch", "2.1.0-py3", None),
        ("localhost/x", "localhost", "x", None, None),
        ("localhost:5000/a/b:1", "localhost:5000", "a/b", "1", None),
        ("127.0.0.1:5000/alice/private:1", "127.0.0.1:5000", "alice/private", "1", None),
        ("[::1]:5000/x", "[::1]:5000", "x", None, None),
        ("Registry.Example.com/x", "Registry.Example.com", "x", None, None),
        ("x@sha256:" + "a" * 64, "docker.io", "library/x", None, "sha256:" + "a" * 64),
    ],
)
def test_known_references(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    assert parse(text) == ImageReference(domain, path, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * 64,  # a whole image ID
        "706e82d82624",  # a prefix of one
        "abc",
        "sha256:" + "0" * 64,
        "sha256:706e82",
        "Busybox",  # Docker Hub repositories are lower case
        "local/BusyBox",
        "busybox:",
        "busybox@sha256:short",
        "-busybox",
        "a//b",
        "a/b/",
        "busybox:" + "t" * 129,
        "x y",
        "127.0.0.1:5000/",
        "a" * 256,
    ],
)
def test_refused_references(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse(text)


def test_an_image_id_is_refused_with_an_actionable_message() -> None:
    with pytest.raises(InvalidReference, match=r"image ID.*repository and tag"):
        parse("sha256:" + "f" * 64)


def test_registry_of_uses_the_grammar() -> None:
    assert registry_of("localhost:5000/x") == "localhost:5000"
    assert registry_of("nvcr.io/nvidia/pytorch:2.1.0") == "nvcr.io"
    assert registry_of("local/busybox") is None
    assert registry_of("Upper/x") == "Upper"  # an upper-case first component is a registry


# -- the registries a name may point at ----------------------------------------------------------

# Literals for the pure checks only (they are never contacted): one per refused range.
REFUSED_HOSTS = [
    "127.0.0.1",
    "127.1",  # inet_aton shorthand for 127.0.0.1
    "2130706433",  # 127.0.0.1 as one number
    "0x7f.1",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[fd12:3456::1]",
    "[ff02::1]",
    "[::ffff:a00:1]",  # IPv4-mapped 10.0.0.1
    "[2002:a00:1::]",  # 6to4 of a private IPv4
    "localhost",
    "LOCALHOST",
    "registry.localhost",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
@pytest.mark.parametrize("port", ["", ":5000"])
def test_a_registry_on_a_local_or_private_address_is_refused(host: str, port: str) -> None:
    reference = parse(f"{host}{port}/team/app:1")
    if reference.domain == "docker.io":  # "2130706433/team/app" is a Docker Hub repository
        assert not port and reference.path == f"{host}/team/app"
        return
    with pytest.raises(RegistryRefused, match=r"not allowed.*ask the operator"):
        RegistryPolicy().check(reference)


@pytest.mark.parametrize(
    "text", ["busybox", "nvcr.io/nvidia/pytorch:2.1.0", "8.8.8.8:5000/x", "ghcr.io/a/b"]
)
def test_a_public_registry_passes(text: str) -> None:
    RegistryPolicy().check(parse(text))


def test_the_operator_allows_a_registry_by_name_and_port() -> None:
    policy = RegistryPolicy(frozenset({"127.0.0.1:5000", "localhost:5000"}))
    policy.check(parse("127.0.0.1:5000/x:1"))
    policy.check(parse("LOCALHOST:5000/x:1"))
    policy.check_resolved(parse("localhost:5000/x:1"), ["127.0.0.1"])
    with pytest.raises(RegistryRefused):
        policy.check(parse("127.0.0.1:5001/x:1"))  # another port is another registry
    with pytest.raises(RegistryRefused):
        policy.check(parse("localhost/x:1"))


def test_the_allow_list_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUWORKER_ALLOWED_REGISTRIES", " 127.0.0.1:5000 , Localhost:5000,,")
    assert RegistryPolicy.from_env().allowed == frozenset({"127.0.0.1:5000", "localhost:5000"})
    monkeypatch.delenv("GPUWORKER_ALLOWED_REGISTRIES")
    assert RegistryPolicy.from_env().allowed == frozenset()


def test_a_name_that_resolves_to_a_private_address_is_refused_at_pull_time() -> None:
    policy = RegistryPolicy()
    reference = parse("registry.example.com/x:1")
    policy.check(reference)  # a name passes the static check
    policy.check_resolved(reference, ["93.184.216.34", "2606:2800:220:1::1"])
    for answer in (["93.184.216.34", "10.0.0.5"], ["::1"], ["fe80::1%eth0"]):
        with pytest.raises(RegistryRefused, match="resolves to"):
            policy.check_resolved(reference, answer)


def test_address_literals() -> None:
    assert address_literal("127.1") == ipaddress.ip_address("127.0.0.1")
    assert address_literal("::1") == ipaddress.ip_address("::1")
    assert address_literal("registry.example.com") is None
    assert refused_address(ipaddress.ip_address("93.184.216.34")) is None
    assert refused_address(ipaddress.ip_address("::ffff:7f00:1")) == "a loopback address"
