"""Property tests for the pure deciders (template, user, registry auth, blog post).

Each aggregate is driven through arbitrary command sequences from a mix of actors, applied the way
`DeciderRunner` applies them: decide on the current state; a refusal (a `GpuWorkerError`) leaves the
state as it was; otherwise every decided event is wrapped into an `Envelope` and folded with
`evolve`. After every step we check:

- the aggregate's invariants (`*_invariant_holds`),
- a per-command model of what the decider must answer (the refusal type, or exactly which events),
  which carries the isolation rules (another user's private resource is 404, a built-in public
  template is 403 for users) and the refresh-token rules,
- that `decide` raised nothing but `GpuWorkerError` and did not mutate the state it was given,
- fold equivalence: replaying every event so far from `None` gives the runner's state, both from the
  in-memory envelopes and after an encode/decode round trip of each envelope on the wire.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st

from events.blog import PostPublished
from events.catalog import decode_event, version_of
from events.container import ContainerChanges, ContainerConfig
from events.envelope import AggregateRef, Envelope, encode_envelope
from events.ids import new_id
from events.registry_auth import RegistryAuthCreated, RegistryAuthDeleted
from events.template import TemplateCreated, TemplateDeleted, TemplateUpdated
from events.user import RefreshFamilyRevoked, RefreshTokenIssued, RefreshTokenRotated, UserSignedUp
from services.deciders.blog import BLOG_POST, PostState, PublishPost
from services.deciders.builtin_templates import SEED_ACTOR, builtin_templates
from services.deciders.decider import Decider, is_system
from services.deciders.registry_auth import (
    REGISTRY_AUTH,
    CreateRegistryAuth,
    DeleteRegistryAuth,
    RegistryAuthState,
)
from services.deciders.template import (
    MAX_DISK_GB,
    TEMPLATE,
    CreateTemplate,
    DeleteTemplate,
    TemplateState,
    UpdateTemplate,
)
from services.deciders.user import (
    USER,
    EndSession,
    RefreshFamily,
    RotateRefreshToken,
    SignUp,
    StartSession,
    UserState,
)
from services.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GpuWorkerError,
    NotFound,
    Unauthorized,
)
from tests import decider_strategies as ds

SEQUENCE_SETTINGS = settings(max_examples=80, deadline=None)
SMALL_SETTINGS = settings(max_examples=60, deadline=None)
MAX_STEPS = 25


def template_record(state: TemplateState) -> dict[str, Any]:
    """What a template's owner can change, as one flat record (the model the checks compare)."""
    return {"name": state.name, "readme": state.readme, **msgspec.structs.asdict(state.container)}


def asked_of(command: UpdateTemplate) -> dict[str, Any]:
    """The fields an update sets, flat."""
    container = msgspec.structs.asdict(command.container) if command.container else {}
    asked = {"name": command.name, "readme": command.readme, **container}
    return {k: v for k, v in asked.items() if v is not None}


def carried_by(event: TemplateUpdated) -> dict[str, Any]:
    container = event.container.set_fields() if event.container else {}
    carried = {"name": event.name, "readme": event.readme, **container}
    return {k: v for k, v in carried.items() if v is not None}


# --- the runner, without the store ----------------------------------------------------------------


def wrap(ref: AggregateRef, command: Any, data: msgspec.Struct) -> Envelope:
    """As DeciderRunner._wrap does it."""
    return Envelope(
        id=new_id(),
        type=type(data).__name__,
        version=version_of(data),
        aggregate=ref,
        occurred_at=command.at,
        recorded_at=datetime.now(UTC),
        actor=command.actor,
        correlation_id=new_id(),
        causation_id=new_id(),
        data=data,
    )


Outcome = list[msgspec.Struct] | GpuWorkerError


@dataclass
class Run:
    """One aggregate as the runner holds it: its state and every event decided so far."""

    decider: Decider[Any]
    aggregate_id: str
    state: Any = None
    events: list[Envelope] = field(default_factory=list)
    at: datetime = ds.BASE_TIME

    @property
    def ref(self) -> AggregateRef:
        return AggregateRef(self.decider.aggregate_type, self.aggregate_id)

    def apply(self, command: Any) -> Outcome:
        before = msgspec.json.encode(self.state)
        try:
            data = self.decider.decide(self.state, command)
        except GpuWorkerError as refusal:
            assert msgspec.json.encode(self.state) == before, "a refusal changed the state"
            return refusal
        except Exception as exc:
            raise AssertionError(
                f"decide raised {type(exc).__name__} (not a GpuWorkerError) for {command!r}"
            ) from exc
        assert isinstance(data, list)
        assert msgspec.json.encode(self.state) == before, "decide mutated the state it was given"
        envelopes = [wrap(self.ref, command, d) for d in data]
        self.state = self.decider.fold(self.state, envelopes)
        self.events.extend(envelopes)
        return data


def check_replay(run: Run) -> None:
    """Fold equivalence, in memory and through the wire format."""
    assert run.decider.fold(None, run.events) == run.state
    wire = []
    for position, envelope in enumerate(run.events, start=1):
        payload = encode_envelope(envelope)
        assert b'"sequence"' not in payload
        decoded = decode_event(payload, sequence=position)
        assert decoded.sequence == position
        assert msgspec.structs.replace(decoded, sequence=0) == envelope
        wire.append(decoded)
    assert run.decider.fold(None, wire) == run.state
    # The state itself crosses the wire in the runner's reply and is decoded by the api.
    if run.state is not None:
        reply = msgspec.json.encode(run.state)
        assert msgspec.json.decode(reply, type=run.decider.state_type) == run.state


def expect_refusal(outcome: Outcome, kind: type[GpuWorkerError]) -> None:
    assert type(outcome) is kind, f"expected {kind.__name__}, got {outcome!r}"


def drive(
    data: st.DataObject,
    run: Run,
    commands: st.SearchStrategy[Any],
    check_step: Callable[[Any, Any, Outcome, Run], None],
    invariant_holds: Callable[[Run], None],
    prepare: Callable[[Any, Run], Any] = lambda command, run: ds.at_time(command, run.at),
) -> list[Outcome]:
    invariant_holds(run)
    outcomes = []
    for _ in range(data.draw(st.integers(0, MAX_STEPS), label="steps")):
        run.at += data.draw(ds.time_steps, label="time step")
        command = prepare(data.draw(commands, label="command"), run)
        previous = run.state
        outcome = run.apply(command)
        note(f"applied {command!r} -> {outcome!r}")
        event(
            f"{type(command).__name__} -> "
            + (
                type(outcome).__name__
                if isinstance(outcome, GpuWorkerError)
                else str([type(d).__name__ for d in outcome])
            )
        )
        if isinstance(outcome, GpuWorkerError):
            assert run.state is previous
        check_step(previous, command, outcome, run)
        invariant_holds(run)
        check_replay(run)
        outcomes.append(outcome)
    return outcomes


# --- template -------------------------------------------------------------------------------------


def template_invariant_holds(run: Run) -> None:
    state: TemplateState | None = run.state
    if state is None:
        assert run.events == []
        return
    created = run.events[0]
    assert isinstance(created.data, TemplateCreated)
    assert not any(isinstance(e.data, TemplateCreated) for e in run.events[1:])
    assert state.id == run.aggregate_id
    assert state.name.strip()
    assert 1 <= state.container.container_disk_in_gb <= MAX_DISK_GB
    assert 0 <= state.container.volume_in_gb <= MAX_DISK_GB
    assert state.version == len(run.events)
    assert state.owner_id == created.actor
    assert state.created_at == created.occurred_at
    assert state.updated_at == run.events[-1].occurred_at
    assert not state.is_public or is_system(created.actor)
    deletions = [i for i, e in enumerate(run.events) if isinstance(e.data, TemplateDeleted)]
    # Deleted is terminal: at most one deletion, and nothing after it.
    assert deletions in ([], [len(run.events) - 1])
    assert state.deleted == bool(deletions)


def template_values_ok(name: str | None, disk: int | None, volume: int | None) -> bool:
    return (
        (name is None or bool(name.strip()))
        and (disk is None or 1 <= disk <= MAX_DISK_GB)
        and (volume is None or 0 <= volume <= MAX_DISK_GB)
    )


def check_template_step(
    prev: TemplateState | None, command: Any, outcome: Outcome, run: Run
) -> None:
    new: TemplateState = run.state
    match command:
        case CreateTemplate():
            if prev is not None:
                expect_refusal(outcome, Conflict)
            elif command.is_public and not is_system(command.actor):
                expect_refusal(outcome, Forbidden)
            elif not template_values_ok(
                command.name,
                command.container.container_disk_in_gb,
                command.container.volume_in_gb,
            ):
                expect_refusal(outcome, BadRequest)
            else:
                assert outcome == [
                    TemplateCreated(
                        name=command.name,
                        container=command.container,
                        readme=command.readme,
                        is_public=command.is_public,
                    )
                ]
                assert new.owner_id == command.actor
                assert new.version == 1
                assert not new.deleted
                assert new.created_at == new.updated_at == command.at
        case UpdateTemplate() | DeleteTemplate():
            if prev is None or prev.deleted:
                expect_refusal(outcome, NotFound)
            elif command.actor != prev.owner_id and not is_system(command.actor):
                # Isolation: another user's private template does not exist for you; a built-in
                # public one exists but is read-only.
                expect_refusal(outcome, Forbidden if prev.is_public else NotFound)
            elif isinstance(command, DeleteTemplate):
                assert outcome == [TemplateDeleted()]
                assert new == msgspec.structs.replace(
                    prev, deleted=True, updated_at=command.at, version=prev.version + 1
                )
            elif not template_values_ok(
                command.name,
                command.container.container_disk_in_gb if command.container else None,
                command.container.volume_in_gb if command.container else None,
            ):
                expect_refusal(outcome, BadRequest)
            else:
                before = template_record(prev)
                expected = {**before, **asked_of(command)}
                if expected == before:
                    assert outcome == []
                    assert new is prev
                else:
                    assert isinstance(outcome, list)
                    assert len(outcome) == 1
                    assert isinstance(outcome[0], TemplateUpdated)
                    # Only what changed is carried, and all of it.
                    assert carried_by(outcome[0]) == {
                        k: v for k, v in expected.items() if before[k] != v
                    }
                    assert template_record(new) == expected
                    untouched = msgspec.structs.replace(
                        new,
                        name=prev.name,
                        readme=prev.readme,
                        container=prev.container,
                        updated_at=prev.updated_at,
                        version=prev.version,
                    )
                    assert untouched == prev
                    assert (new.updated_at, new.version) == (command.at, prev.version + 1)
        case _:
            raise AssertionError(f"unexpected command {command!r}")
    if prev is not None:
        # The owner and visibility of a template never change.
        assert new.owner_id == prev.owner_id
        assert new.is_public == prev.is_public
        assert new.created_at == prev.created_at


@given(data=st.data(), created=st.booleans())
@SEQUENCE_SETTINGS
def test_template_command_sequences(data: st.DataObject, created: bool) -> None:
    """From nothing, or (so that most steps exercise updates and deletes rather than refused
    creates) from a valid create: a user's private template, an operator's private or public one."""
    run = Run(TEMPLATE, "0190f1e2-1111-7000-8000-000000000001")
    if created:
        create = data.draw(ds.valid_create_template, label="create")
        assert isinstance(run.apply(create), list)
    drive(data, run, ds.template_commands, check_template_step, template_invariant_holds)


@given(
    owner=ds.user_ids,
    intruder=ds.user_ids,
    create=ds.valid_create_template_by(st.just(ds.OWNER)),
    attempt=st.one_of(ds.update_template(st.just(ds.OTHER)), ds.delete_template(st.just(ds.OTHER))),
)
@SMALL_SETTINGS
def test_private_template_is_not_found_for_anyone_else(
    owner: str, intruder: str, create: CreateTemplate, attempt: Any
) -> None:
    """Whatever another user asks of a private template (any update, valid or not, or a delete),
    the answer is 404, never 403 and never a change."""
    if owner == intruder:
        intruder = f"{intruder}-2"
    create = msgspec.structs.replace(create, actor=owner)
    run = Run(TEMPLATE, "0190f1e2-1111-7000-8000-000000000003")
    assert isinstance(run.apply(create), list)
    with pytest.raises(NotFound):
        TEMPLATE.decide(run.state, msgspec.structs.replace(attempt, actor=intruder))
    # The owner may (this is what makes the 404 an isolation rule, not a blanket refusal).
    owner_outcome = run.apply(DeleteTemplate(actor=owner, at=ds.BASE_TIME))
    assert owner_outcome == [TemplateDeleted()]


@given(
    template_id=st.sampled_from(sorted(builtin_templates())),
    user=ds.user_ids,
    attempt=st.one_of(ds.update_template(st.just(ds.OTHER)), ds.delete_template(st.just(ds.OTHER))),
)
@SMALL_SETTINGS
def test_builtin_template_is_read_only_for_users(template_id: str, user: str, attempt: Any) -> None:
    run = Run(TEMPLATE, template_id)
    assert isinstance(run.apply(builtin_templates()[template_id]), list)
    assert run.state.is_public
    assert run.state.owner_id == SEED_ACTOR
    with pytest.raises(Forbidden):
        TEMPLATE.decide(run.state, msgspec.structs.replace(attempt, actor=user))
    # An operator may still change it.
    assert TEMPLATE.decide(run.state, DeleteTemplate(actor=SEED_ACTOR, at=ds.BASE_TIME)) == [
        TemplateDeleted()
    ]


# --- registry auth --------------------------------------------------------------------------------


def registry_auth_invariant_holds(run: Run) -> None:
    state: RegistryAuthState | None = run.state
    if state is None:
        assert run.events == []
        return
    created = run.events[0]
    assert isinstance(created.data, RegistryAuthCreated)
    assert state.id == run.aggregate_id
    assert state.owner_id == created.actor
    assert state.name.strip()
    assert state.username.strip()
    assert state.version == len(run.events)
    deletions = [i for i, e in enumerate(run.events) if isinstance(e.data, RegistryAuthDeleted)]
    assert deletions in ([], [len(run.events) - 1])
    assert state.deleted == bool(deletions)


def check_registry_auth_step(
    prev: RegistryAuthState | None, command: Any, outcome: Outcome, run: Run
) -> None:
    new: RegistryAuthState = run.state
    match command:
        case CreateRegistryAuth():
            if prev is not None:
                expect_refusal(outcome, Conflict)
            elif not command.name.strip() or not command.username.strip():
                expect_refusal(outcome, BadRequest)
            else:
                assert outcome == [
                    RegistryAuthCreated(
                        name=command.name,
                        username=command.username,
                        password_ciphertext=command.password_ciphertext,
                    )
                ]
                assert new.owner_id == command.actor
        case DeleteRegistryAuth():
            if prev is None or prev.deleted or command.actor != prev.owner_id:
                # Isolation: not the owner (operators included) means not found.
                expect_refusal(outcome, NotFound)
            else:
                assert outcome == [RegistryAuthDeleted()]
                assert new == msgspec.structs.replace(prev, deleted=True, version=prev.version + 1)
        case _:
            raise AssertionError(f"unexpected command {command!r}")
    if prev is not None:
        assert new.owner_id == prev.owner_id
        assert not prev.deleted or new is prev


@given(data=st.data())
@SEQUENCE_SETTINGS
def test_registry_auth_command_sequences(data: st.DataObject) -> None:
    run = Run(REGISTRY_AUTH, "0190f1e2-2222-7000-8000-000000000001")
    drive(
        data,
        run,
        ds.registry_auth_commands,
        check_registry_auth_step,
        registry_auth_invariant_holds,
    )


@given(owner=ds.user_ids, intruder=st.one_of(ds.user_ids, st.just(ds.SYSTEM)))
@SMALL_SETTINGS
def test_registry_auth_is_not_found_for_anyone_else(owner: str, intruder: str) -> None:
    if owner == intruder:
        intruder = f"{intruder}-2"
    run = Run(REGISTRY_AUTH, "0190f1e2-2222-7000-8000-000000000002")
    created = run.apply(
        CreateRegistryAuth(
            actor=owner, at=ds.BASE_TIME, name="ghcr", username="me", password_ciphertext="c"
        )
    )
    assert isinstance(created, list)
    with pytest.raises(NotFound):
        REGISTRY_AUTH.decide(run.state, DeleteRegistryAuth(actor=intruder, at=ds.BASE_TIME))
    assert run.apply(DeleteRegistryAuth(actor=owner, at=ds.BASE_TIME)) == [RegistryAuthDeleted()]


# --- blog -----------------------------------------------------------------------------------------


def blog_invariant_holds(run: Run) -> None:
    state: PostState | None = run.state
    if state is None:
        assert run.events == []
        return
    assert all(isinstance(e.data, PostPublished) for e in run.events)
    # The version counts publishes, and no publish repeats the one before it.
    assert state.version == len(run.events)
    contents = [(e.data.title, e.data.summary, e.data.body) for e in run.events]
    assert all(a != b for a, b in itertools.pairwise(contents))
    assert (state.title, state.summary, state.body) == contents[-1]
    assert state.title.strip()
    assert state.slug == run.aggregate_id
    assert state.published_at == run.events[0].occurred_at
    assert state.updated_at == run.events[-1].occurred_at
    assert all(is_system(e.actor) for e in run.events)


def check_blog_step(prev: PostState | None, command: Any, outcome: Outcome, run: Run) -> None:
    new: PostState = run.state
    assert isinstance(command, PublishPost)
    if not is_system(command.actor):
        expect_refusal(outcome, Forbidden)
    elif not command.title.strip():
        expect_refusal(outcome, BadRequest)
    elif prev is not None and (prev.title, prev.summary, prev.body) == (
        command.title,
        command.summary,
        command.body,
    ):
        assert outcome == []
        assert new is prev
    else:
        assert outcome == [
            PostPublished(title=command.title, summary=command.summary, body=command.body)
        ]
        assert new.version == (prev.version if prev else 0) + 1
        assert new.updated_at == command.at
        assert new.published_at == (prev.published_at if prev else command.at)


@given(data=st.data())
@SEQUENCE_SETTINGS
def test_blog_post_command_sequences(data: st.DataObject) -> None:
    run = Run(BLOG_POST, "hello-gpus")
    drive(
        data,
        run,
        ds.blog_commands,
        check_blog_step,
        blog_invariant_holds,
        prepare=lambda command, run: ds.resolve_republish(ds.at_time(command, run.at), run.state),
    )


# --- user -----------------------------------------------------------------------------------------


def family_holding(state: UserState | None, token_hash: str) -> tuple[str, RefreshFamily] | None:
    if state is None:
        return None
    holding = [
        (family_id, family)
        for family_id, family in state.families.items()
        if token_hash == family.current_hash or token_hash in family.retired_hashes
    ]
    assert len(holding) <= 1, f"hash {token_hash!r} is in several families"
    return holding[0] if holding else None


def user_invariant_holds(run: Run) -> None:
    state: UserState | None = run.state
    if state is None:
        assert run.events == []
        return
    assert isinstance(run.events[0].data, UserSignedUp)
    assert state.id == run.aggregate_id
    assert state.version == len(run.events)
    hashes = ds.known_hashes(state)
    # Every hash ever issued is unique to one place: a current hash is never also retired (in its
    # family or another), and a hash never lives in two families.
    assert len(hashes) == len(set(hashes)), state.families
    for family in state.families.values():
        assert family.current_hash not in family.retired_hashes
        assert family.revoked_reason in (None, "reuse")


def check_user_step(prev: UserState | None, command: Any, outcome: Outcome, run: Run) -> None:
    new: UserState = run.state
    known = set(ds.known_hashes(prev))
    match command:
        case SignUp():
            if prev is not None:
                expect_refusal(outcome, Conflict)
            elif not command.name.strip():
                expect_refusal(outcome, BadRequest)
            else:
                assert outcome == [
                    UserSignedUp(
                        email=command.email, name=command.name, password_hash=command.password_hash
                    ),
                    RefreshTokenIssued(
                        family_id=command.family_id,
                        token_hash=command.token_hash,
                        expires_at=command.expires_at,
                    ),
                ]
                assert new.families == {
                    command.family_id: RefreshFamily(
                        current_hash=command.token_hash, expires_at=command.expires_at
                    )
                }
        case StartSession():
            if prev is None:
                expect_refusal(outcome, NotFound)
            elif command.family_id in prev.families or command.token_hash in known:
                expect_refusal(outcome, Conflict)
            else:
                assert outcome == [
                    RefreshTokenIssued(
                        family_id=command.family_id,
                        token_hash=command.token_hash,
                        expires_at=command.expires_at,
                    )
                ]
        case RotateRefreshToken():
            found = family_holding(prev, command.presented_hash)
            if found is None:
                expect_refusal(outcome, Unauthorized)
                return
            family_id, family = found
            if family.revoked_reason is not None:
                expect_refusal(outcome, Unauthorized)
            elif command.presented_hash != family.current_hash:
                # A retired token came back: exactly one revocation of exactly that family.
                assert outcome == [RefreshFamilyRevoked(family_id=family_id, reason="reuse")]
                assert new.families[family_id] == msgspec.structs.replace(
                    family, revoked_reason="reuse"
                )
            elif command.at >= family.expires_at:
                expect_refusal(outcome, Unauthorized)
            elif command.token_hash in known:
                expect_refusal(outcome, Conflict)
            else:
                assert outcome == [
                    RefreshTokenRotated(
                        family_id=family_id,
                        previous_hash=command.presented_hash,
                        token_hash=command.token_hash,
                        expires_at=command.expires_at,
                    )
                ]
                assert new.families[family_id] == RefreshFamily(
                    current_hash=command.token_hash,
                    expires_at=command.expires_at,
                    retired_hashes=(*family.retired_hashes, command.presented_hash),
                )
        case _:
            raise AssertionError(f"unexpected command {command!r}")
    if prev is not None:
        assert (new.email, new.name, new.password_hash, new.created_at) == (
            prev.email,
            prev.name,
            prev.password_hash,
            prev.created_at,
        )
        touched = [e.data.family_id for e in run.events[prev.version :]]
        for family_id, family in prev.families.items():
            after = new.families[family_id]
            # Families never vanish, retired hashes only grow, a revoked family stays frozen.
            assert after.retired_hashes[: len(family.retired_hashes)] == family.retired_hashes
            if family.revoked_reason is not None:
                assert after == family
            if family_id not in touched:
                assert after == family


@given(data=st.data(), signed_up=st.booleans())
@SEQUENCE_SETTINGS
def test_user_command_sequences(data: st.DataObject, signed_up: bool) -> None:
    """From nothing, or (so that most steps work on sessions) from an account just signed up."""
    run = Run(USER, "0190f1e2-3333-7000-8000-000000000001")
    if signed_up:
        signup = data.draw(ds.sign_up.filter(lambda c: c.name.strip()), label="sign up")
        assert isinstance(run.apply(ds.at_time(signup, run.at)), list)
    drive(
        data,
        run,
        ds.user_commands,
        check_user_step,
        user_invariant_holds,
        prepare=lambda command, run: ds.resolve_known(ds.at_time(command, run.at), run.state),
    )


@given(
    lifetime=st.integers(2, 30 * 86_400),
    first_use=st.floats(0, 1, exclude_max=True),
    later=st.integers(0, 60 * 86_400),
    other_family=st.booleans(),
)
@SMALL_SETTINGS
def test_reused_refresh_token_revokes_its_family(
    lifetime: int, first_use: float, later: int, other_family: bool
) -> None:
    t0 = ds.BASE_TIME
    expires = t0 + timedelta(seconds=lifetime)
    run = Run(USER, "0190f1e2-3333-7000-8000-000000000002")
    signup = SignUp(
        actor=ds.OWNER,
        at=t0,
        email="a@example.com",
        name="A",
        password_hash="x",
        family_id="fam-1",
        token_hash="h-old",
        expires_at=expires,
    )
    assert isinstance(run.apply(signup), list)
    if other_family:
        assert isinstance(
            run.apply(
                StartSession(
                    actor=ds.OWNER,
                    at=t0,
                    family_id="fam-2",
                    token_hash="h-other",
                    expires_at=t0 + timedelta(days=90),
                )
            ),
            list,
        )
    rotate_at = t0 + timedelta(seconds=int((lifetime - 1) * first_use))
    rotated = run.apply(
        RotateRefreshToken(
            actor=ds.OWNER,
            at=rotate_at,
            presented_hash="h-old",
            token_hash="h-new",
            expires_at=rotate_at + timedelta(days=30),
        )
    )
    assert isinstance(rotated, list)
    assert [type(e) for e in rotated] == [RefreshTokenRotated]

    reuse_at = rotate_at + timedelta(seconds=later)
    reused = run.apply(
        RotateRefreshToken(
            actor=ds.OTHER,
            at=reuse_at,
            presented_hash="h-old",
            token_hash="h-thief",
            expires_at=reuse_at + timedelta(days=30),
        )
    )
    assert reused == [RefreshFamilyRevoked(family_id="fam-1", reason="reuse")]
    for presented in ("h-old", "h-new"):
        with pytest.raises(Unauthorized):
            USER.decide(
                run.state,
                RotateRefreshToken(
                    actor=ds.OWNER,
                    at=reuse_at,
                    presented_hash=presented,
                    token_hash="h-next",
                    expires_at=reuse_at + timedelta(days=30),
                ),
            )
    if other_family:
        # Only the reused family dies.
        assert run.state.families["fam-2"].revoked_reason is None
        assert [
            type(e)
            for e in USER.decide(
                run.state,
                RotateRefreshToken(
                    actor=ds.OWNER,
                    at=reuse_at,
                    presented_hash="h-other",
                    token_hash="h-other-2",
                    expires_at=reuse_at + timedelta(days=90),
                ),
            )
        ] == [RefreshTokenRotated]
    check_replay(run)


@given(lifetime=st.integers(-86_400, 86_400), used_after=st.integers(0, 2 * 86_400))
@SMALL_SETTINGS
def test_expired_refresh_token_is_unauthorized(lifetime: int, used_after: int) -> None:
    t0 = ds.BASE_TIME
    expires = t0 + timedelta(seconds=lifetime)
    run = Run(USER, "0190f1e2-3333-7000-8000-000000000003")
    run.apply(
        SignUp(
            actor=ds.OWNER,
            at=t0,
            email="a@example.com",
            name="A",
            password_hash="x",
            family_id="fam-1",
            token_hash="h-1",
            expires_at=expires,
        )
    )
    at = t0 + timedelta(seconds=used_after)
    rotate = RotateRefreshToken(
        actor=ds.OWNER, at=at, presented_hash="h-1", token_hash="h-2", expires_at=at
    )
    if at >= expires:
        with pytest.raises(Unauthorized):
            USER.decide(run.state, rotate)
    else:
        assert [type(e) for e in USER.decide(run.state, rotate)] == [RefreshTokenRotated]


def test_logout_ends_only_the_presented_current_session() -> None:
    """EndSession (the console's logout): the family of the token presented ends with reason
    `logout`; a retired token, an unknown one or another actor's is refused; twice is a no-op."""
    t0 = ds.BASE_TIME
    me = "0190f1e2-3333-7000-8000-000000000005"  # a user logs out of their own account
    run = Run(USER, me)
    run.apply(
        SignUp(
            actor=ds.OWNER,
            at=t0,
            email="a@example.com",
            name="A",
            password_hash="x",
            family_id="fam-1",
            token_hash="h-1",
            expires_at=t0 + timedelta(days=30),
        )
    )
    run.apply(
        RotateRefreshToken(
            actor=ds.OWNER,
            at=t0,
            presented_hash="h-1",
            token_hash="h-2",
            expires_at=t0 + timedelta(days=30),
        )
    )

    def end(actor: str, presented: str) -> list[Any]:
        return USER.decide(run.state, EndSession(actor=actor, at=t0, presented_hash=presented))

    for actor, presented in ((me, "h-1"), (me, "h-unknown"), (ds.OTHER, "h-2")):
        with pytest.raises(Unauthorized):
            end(actor, presented)
    assert run.apply(EndSession(actor=me, at=t0, presented_hash="h-2")) == [
        RefreshFamilyRevoked(family_id="fam-1", reason="logout")
    ]
    assert end(me, "h-2") == []
    with pytest.raises(Unauthorized):
        USER.decide(
            run.state,
            RotateRefreshToken(
                actor=ds.OWNER,
                at=t0,
                presented_hash="h-2",
                token_hash="h-3",
                expires_at=t0 + timedelta(days=30),
            ),
        )
    check_replay(run)


@given(
    first=ds.sign_up.filter(lambda c: c.name.strip()),
    second=ds.sign_up,
    between=st.lists(ds.user_commands, max_size=5),
)
@SMALL_SETTINGS
def test_second_signup_is_a_conflict(first: SignUp, second: SignUp, between: list[Any]) -> None:
    """Any second signup on an account (whatever happened in between, even with a blank name that
    would otherwise be a 400) is a 409 and changes nothing."""
    run = Run(USER, "0190f1e2-3333-7000-8000-000000000004")
    assert isinstance(run.apply(first), list)
    for command in between:
        run.apply(ds.resolve_known(command, run.state))
    before = run.state
    outcome = run.apply(second)
    expect_refusal(outcome, Conflict)
    assert run.state is before


# --- upcasting ------------------------------------------------------------------------------------


@given(
    name=st.text(min_size=1).filter(str.strip),
    image=st.text(max_size=20),
    start_cmd=st.none() | st.text(max_size=20),
    disk=st.integers(1, MAX_DISK_GB),
    volume=st.integers(0, MAX_DISK_GB),
    readme=st.text(max_size=40),
    at=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
    ),
)
@SMALL_SETTINGS
def test_template_created_v1_is_upcast_on_read(
    name: str,
    image: str,
    start_cmd: str | None,
    disk: int,
    volume: int,
    readme: str,
    at: datetime,
) -> None:
    stamp = at.isoformat().replace("+00:00", "Z")
    raw = json.dumps(
        {
            "id": "0190f1e2-4444-7000-8000-000000000001",
            "type": "TemplateCreated",
            "version": 1,
            "aggregate": {"type": "template", "id": "tpl-v1"},
            "occurred_at": stamp,
            "recorded_at": stamp,
            "actor": ds.OWNER,
            "correlation_id": "corr-1",
            "data": {
                "name": name,
                "image_name": image,
                "docker_start_cmd": start_cmd,
                "container_disk_in_gb": disk,
                "volume_in_gb": volume,
                "volume_mount_path": "/workspace",
                "readme": readme,
                "is_public": False,
            },
        }
    ).encode()
    envelope = decode_event(raw, sequence=7)
    assert envelope.version == version_of(envelope.data) == 3
    assert envelope.sequence == 7
    assert envelope.causation_id is None
    assert envelope.data == TemplateCreated(
        name=name,
        container=ContainerConfig(
            image_name=image,
            docker_start_cmd=start_cmd,
            container_disk_in_gb=disk,
            volume_in_gb=volume,
            volume_mount_path="/workspace",
            env={},
            ports=[],
        ),
        readme=readme,
        is_public=False,
    )
    state = TEMPLATE.evolve(None, envelope)
    assert state.container.env == {}
    assert state.container.ports == []
    assert state.owner_id == ds.OWNER
    assert state.created_at == at
    assert state.version == 1
    # The upcast event reads back as the current version once written in the current shape.
    rewritten = decode_event(encode_envelope(envelope), sequence=7)
    assert rewritten == envelope
    # And the upcast state takes part in the current decider like any other.
    update = UpdateTemplate(actor=ds.OWNER, at=at, container=ContainerChanges(ports=["22/tcp"]))
    updated = TEMPLATE.decide(state, update)
    assert updated == [TemplateUpdated(container=ContainerChanges(ports=["22/tcp"]))]
