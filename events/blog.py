"""Facts about the public blog."""

import msgspec

from events.catalog import registrar

register = registrar("blog_post")


@register()
class PostPublished(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    summary: str
    body: str
