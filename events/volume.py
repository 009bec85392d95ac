"""Facts about network storage volumes."""

import msgspec

from events.catalog import registrar

register = registrar("volume")


@register()
class VolumeCreated(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    size_gb: int
    datacenter_id: str
    # The storage host of the data center that holds the volume's data.
    host_id: str
    price_per_gb_month_micros: int
    rate_card_version: str


@register()
class VolumeRenamed(msgspec.Struct, frozen=True):
    name: str


@register()
class VolumeGrown(msgspec.Struct, frozen=True, kw_only=True):
    size_gb: int


@register()
class VolumeAttached(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str


@register()
class VolumeDetached(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str


@register()
class VolumeDeleteRequested(msgspec.Struct, frozen=True):
    pass


# What the storage host saw; `occurred_at` is its clock.


@register()
class VolumeProvisioned(msgspec.Struct, frozen=True):
    pass


@register()
class VolumeResized(msgspec.Struct, frozen=True, kw_only=True):
    size_gb: int


@register()
class VolumeProvisioningFailed(msgspec.Struct, frozen=True, kw_only=True):
    reason: str


@register()
class VolumeDeleted(msgspec.Struct, frozen=True):
    pass
