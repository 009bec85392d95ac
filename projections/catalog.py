"""Every projection, by name. The name is also the table and the durable consumer's suffix."""

from __future__ import annotations

from projections.aggregate_table import AggregateTable
from projections.jobs import job_effects
from services.deciders.api_key import API_KEY
from services.deciders.blog import BLOG_POST
from services.deciders.endpoint import ENDPOINT
from services.deciders.host import HOST
from services.deciders.instance import INSTANCE
from services.deciders.job import JOB
from services.deciders.registry_auth import REGISTRY_AUTH
from services.deciders.template import TEMPLATE
from services.deciders.user import USER
from services.deciders.volume import VOLUME

PROJECTIONS: dict[str, AggregateTable] = {
    p.name: p
    for p in (
        AggregateTable(
            name="users",
            decider=USER,
            owner_of=lambda s: s.id,
            created_at_of=lambda s: s.created_at,
        ),
        AggregateTable(
            name="templates",
            decider=TEMPLATE,
            owner_of=lambda s: None if s.is_public else s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.deleted,
        ),
        AggregateTable(
            name="registry_auths",
            decider=REGISTRY_AUTH,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.deleted,
        ),
        AggregateTable(
            name="hosts",
            decider=HOST,
            owner_of=lambda s: None,
            created_at_of=lambda s: s.registered_at,
        ),
        AggregateTable(
            name="instances",
            decider=INSTANCE,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.status == "TERMINATED",
        ),
        AggregateTable(
            name="volumes",
            decider=VOLUME,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.status == "DELETED",
        ),
        AggregateTable(
            name="api_keys",
            decider=API_KEY,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.revoked,
        ),
        AggregateTable(
            name="endpoints",
            decider=ENDPOINT,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.created_at,
            deleted_of=lambda s: s.deleted,
        ),
        AggregateTable(
            name="jobs",
            decider=JOB,
            owner_of=lambda s: s.owner_id,
            created_at_of=lambda s: s.submitted_at,
            after_apply=job_effects,
        ),
        AggregateTable(
            name="blog_posts",
            decider=BLOG_POST,
            owner_of=lambda s: None,
            created_at_of=lambda s: s.published_at,
        ),
    )
}

BY_AGGREGATE_TYPE: dict[str, AggregateTable] = {
    p.decider.aggregate_type: p for p in PROJECTIONS.values()
}
