"""Every decider, by aggregate type."""

from typing import Any

from services.deciders.api_key import API_KEY
from services.deciders.blog import BLOG_POST
from services.deciders.decider import Decider
from services.deciders.email_claim import EMAIL_CLAIM
from services.deciders.endpoint import ENDPOINT
from services.deciders.host import HOST
from services.deciders.instance import INSTANCE
from services.deciders.job import JOB
from services.deciders.registry_auth import REGISTRY_AUTH
from services.deciders.template import TEMPLATE
from services.deciders.user import USER
from services.deciders.volume import VOLUME

DECIDERS: dict[str, Decider[Any]] = {
    d.aggregate_type: d
    for d in (
        USER,
        EMAIL_CLAIM,
        TEMPLATE,
        REGISTRY_AUTH,
        BLOG_POST,
        HOST,
        INSTANCE,
        VOLUME,
        API_KEY,
        ENDPOINT,
        JOB,
    )
}
