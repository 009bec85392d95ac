"""Hypothesis strategies shared by the decider property tests.

Commands are drawn at `BASE_TIME`; the harness moves them to its own monotonic clock with
`at_time` (building strategies once, not per step, keeps the tests fast). They come from a mix of
actors: the owner, another user and an operator (`system:deciders`). Text comes from small
pools mixed with arbitrary text, so that blank names, identical updates and republishes, and
token-hash collisions all happen often enough to matter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import strategies as st

from events.container import ContainerChanges, ContainerConfig
from services.deciders.blog import PostState, PublishPost
from services.deciders.registry_auth import CreateRegistryAuth, DeleteRegistryAuth
from services.deciders.template import CreateTemplate, DeleteTemplate, UpdateTemplate
from services.deciders.user import RotateRefreshToken, SignUp, StartSession, UserState

BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)

OWNER = "0190f1e2-0000-7000-8000-00000000000a"
OTHER = "0190f1e2-0000-7000-8000-00000000000b"
SYSTEM = "system:deciders"
ACTORS = (OWNER, OTHER, SYSTEM)

# The owner weighs double, so that sequences act on their own resources as often as not.
actors = st.sampled_from((OWNER, OWNER, OTHER, SYSTEM))
# Any non-operator user: the two fixed ones, or a fresh one.
user_ids = st.one_of(st.sampled_from((OWNER, OTHER)), st.uuids().map(str))

# How far the clock moves between two commands: not at all, a little, or days.
time_steps = st.one_of(
    st.just(timedelta(0)),
    st.integers(1, 10**6).map(lambda us: timedelta(microseconds=us)),
    st.integers(1, 3 * 86_400).map(lambda s: timedelta(seconds=s)),
)

short_text = st.text(max_size=12)
blank_or_text = st.one_of(
    st.sampled_from(("x", "PyTorch 2.1", " padded ")),
    st.sampled_from(("", " ", "\t\n", "\u3000")),
    short_text,
)
# Mostly in range (1..4000 for the container disk, 0..4000 for the volume), often on an edge,
# sometimes anything a 64-bit integer holds.
disk_sizes = st.one_of(
    st.integers(1, 4_000),
    st.integers(1, 4_000),
    st.sampled_from((-1, 0, 1, 20, 4_000, 4_001)),
    st.sampled_from((-(2**63), 2**31, 2**53 + 1, 2**63 - 1)),
    st.integers(-(2**63), 2**63 - 1),
)
env_maps = st.dictionaries(
    st.sampled_from(("MODEL", "PORT", "")) | short_text, short_text, max_size=3
)
port_lists = st.lists(st.sampled_from(("8888/http", "22/tcp")) | short_text, max_size=3)


def _maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), strategy)


# --- template -------------------------------------------------------------------------------------


def container_config(**overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[ContainerConfig]:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "image_name": st.sampled_from(("nvidia/cuda:12.4", "busybox")) | short_text,
        "docker_start_cmd": _maybe(short_text),
        "container_disk_in_gb": disk_sizes,
        "volume_in_gb": disk_sizes,
        "volume_mount_path": st.sampled_from(("/workspace", "/data")) | short_text,
        "env": env_maps,
        "ports": port_lists,
    }
    return st.builds(ContainerConfig, **{**fields, **overrides})


def create_template(
    actor: st.SearchStrategy[str] = actors, **overrides: st.SearchStrategy[Any]
) -> st.SearchStrategy:
    fields: dict[str, st.SearchStrategy[Any]] = {
        "actor": actor,
        "at": st.just(BASE_TIME),
        "name": blank_or_text,
        "container": container_config(),
        "readme": st.sampled_from(("", "readme")) | short_text,
        "is_public": st.booleans(),
    }
    return st.builds(CreateTemplate, **{**fields, **overrides})


# Creates the decider accepts: a user's private template, or an operator's private or public one.
_valid_values = {
    "name": st.sampled_from(("x", "PyTorch 2.1", " padded ")),
    "container": container_config(
        container_disk_in_gb=st.one_of(st.sampled_from((1, 20, 4_000)), st.integers(1, 4_000)),
        volume_in_gb=st.one_of(st.sampled_from((0, 50, 4_000)), st.integers(0, 4_000)),
    ),
}
_private = st.just(False)


def valid_create_template_by(
    actor: st.SearchStrategy[str], is_public: st.SearchStrategy[bool] = _private
) -> st.SearchStrategy:
    return create_template(actor, is_public=is_public, **_valid_values)


valid_create_template = st.one_of(
    valid_create_template_by(st.sampled_from((OWNER, OTHER))),
    valid_create_template_by(st.just(SYSTEM), st.booleans()),
)


def update_template(actor: st.SearchStrategy[str] = actors) -> st.SearchStrategy:
    """Some updates change nothing (no field, or only values already there)."""
    nothing = st.builds(UpdateTemplate, actor=actor, at=st.just(BASE_TIME))
    same_disk = st.builds(
        UpdateTemplate,
        actor=actor,
        at=st.just(BASE_TIME),
        container=st.builds(
            ContainerChanges,
            container_disk_in_gb=st.sampled_from((20, 4_000)),
            volume_mount_path=st.just("/workspace"),
        ),
    )
    return st.one_of(nothing, same_disk, _any_update(actor), _any_update(actor))


def _any_update(actor: st.SearchStrategy[str]) -> st.SearchStrategy:
    return st.builds(
        UpdateTemplate,
        actor=actor,
        at=st.just(BASE_TIME),
        name=_maybe(blank_or_text),
        container=_maybe(
            st.builds(
                ContainerChanges,
                image_name=_maybe(st.sampled_from(("nvidia/cuda:12.4", "busybox"))),
                docker_start_cmd=_maybe(st.sampled_from(("sleep infinity", "")) | short_text),
                container_disk_in_gb=_maybe(disk_sizes),
                volume_in_gb=_maybe(disk_sizes),
                volume_mount_path=_maybe(st.sampled_from(("/workspace", "/data"))),
                env=_maybe(env_maps),
                ports=_maybe(port_lists),
            )
        ),
        readme=_maybe(st.sampled_from(("", "readme"))),
    )


def delete_template(actor: st.SearchStrategy[str] = actors) -> st.SearchStrategy:
    return st.builds(DeleteTemplate, actor=actor, at=st.just(BASE_TIME))


# Updates weigh more than deletes: a delete ends what a sequence can still explore.
template_commands = st.one_of(
    create_template(), update_template(), update_template(), update_template(), delete_template()
)


# --- registry auth --------------------------------------------------------------------------------


def create_registry_auth(actor: st.SearchStrategy[str] = actors) -> st.SearchStrategy:
    return st.builds(
        CreateRegistryAuth,
        actor=actor,
        at=st.just(BASE_TIME),
        name=blank_or_text,
        username=blank_or_text,
        password_ciphertext=st.just("k1:bm9wZQ==") | short_text,
    )


def delete_registry_auth(actor: st.SearchStrategy[str] = actors) -> st.SearchStrategy:
    return st.builds(DeleteRegistryAuth, actor=actor, at=st.just(BASE_TIME))


registry_auth_commands = st.one_of(create_registry_auth(), delete_registry_auth())


# --- blog -----------------------------------------------------------------------------------------


# A title the harness replaces, on the state of the moment, with the current post's content:
# a republish of exactly what is there (see `resolve_republish`).
SAME_AS_NOW = "@same-as-now"
_post_text = st.sampled_from(("", " ", "Hello", "GPUs are here"))
blog_commands = st.one_of(
    st.builds(
        PublishPost,
        actor=actors,
        at=st.just(BASE_TIME),
        title=_post_text | short_text,
        summary=_post_text,
        body=_post_text,
    ),
    st.builds(
        PublishPost,
        actor=actors,
        at=st.just(BASE_TIME),
        title=st.just(SAME_AS_NOW),
        summary=st.just(""),
        body=st.just(""),
    ),
)


def resolve_republish(command: PublishPost, state: PostState | None) -> PublishPost:
    if command.title != SAME_AS_NOW:
        return command
    if state is None:
        return msgspec.structs.replace(command, title="First post")
    return msgspec.structs.replace(
        command, title=state.title, summary=state.summary, body=state.body
    )


def at_time(command: Any, at: datetime) -> Any:
    """The command as issued at `at` (an `expires_at` keeps its distance from `at`)."""
    changes: dict[str, Any] = {"at": at}
    if hasattr(command, "expires_at"):
        changes["expires_at"] = at + (command.expires_at - command.at)
    return msgspec.structs.replace(command, **changes)


# --- user -----------------------------------------------------------------------------------------

HASH_POOL = ("h-a", "h-b", "h-c")
FAMILY_POOL = ("fam-1", "fam-2", "fam-3")
# A placeholder the harness resolves, on the state of the moment, to a hash the account already
# holds (current or retired, any family): see `resolve_known`.
KNOWN = "@known:"


def known_hashes(state: UserState | None) -> list[str]:
    """Every refresh-token hash the account has ever held, current and retired, all families."""
    if state is None:
        return []
    return [
        h
        for family in state.families.values()
        for h in (family.current_hash, *family.retired_hashes)
    ]


def resolve_known(command: Any, state: UserState | None) -> Any:
    known = known_hashes(state) or list(HASH_POOL)
    changes = {
        name: known[int(value.removeprefix(KNOWN)) % len(known)]
        for name in ("presented_hash", "token_hash")
        if isinstance(value := getattr(command, name, None), str) and value.startswith(KNOWN)
    }
    return msgspec.structs.replace(command, **changes) if changes else command


# (Hypothesis weighs `one_of` branches fairly only when they are distinct objects: weights below
# repeat a strategy by building it again, never by listing the same object twice.)
def _known() -> st.SearchStrategy[str]:
    return st.integers(0, 63).map(lambda i: f"{KNOWN}{i}")


# Presented hashes are mostly ones the account holds; new hashes are mostly fresh, sometimes a
# held or pooled one (a collision the decider must refuse).
_presented = st.one_of(_known(), _known(), st.sampled_from(HASH_POOL), st.uuids().map(str))
_new_hash = st.one_of(
    st.uuids().map(lambda u: f"fresh-{u}"),
    st.uuids().map(lambda u: f"fresh-{u}"),
    st.sampled_from(HASH_POOL),
    _known(),
)
# Sometimes already expired or expiring exactly now, mostly in the future.
_expires_at = st.one_of(
    st.integers(-86_400, 0).map(lambda s: BASE_TIME + timedelta(seconds=s)),
    *[
        st.integers(1, 30 * 86_400).map(lambda s: BASE_TIME + timedelta(seconds=s))
        for _ in range(3)
    ],
)
_family_ids = st.sampled_from(FAMILY_POOL)

sign_up = st.builds(
    SignUp,
    actor=actors,
    at=st.just(BASE_TIME),
    email=st.just("a@example.com") | short_text,
    name=blank_or_text,
    password_hash=st.just("$argon2id$v=19$stub"),
    family_id=_family_ids,
    token_hash=_new_hash,
    expires_at=_expires_at,
)


def _rotate() -> st.SearchStrategy[RotateRefreshToken]:
    return st.builds(
        RotateRefreshToken,
        actor=actors,
        at=st.just(BASE_TIME),
        presented_hash=_presented,
        token_hash=_new_hash,
        expires_at=_expires_at,
    )


user_commands = st.one_of(
    sign_up,
    st.builds(
        StartSession,
        actor=actors,
        at=st.just(BASE_TIME),
        family_id=_family_ids,
        token_hash=_new_hash,
        expires_at=_expires_at,
    ),
    _rotate(),
    _rotate(),
)
