"""Event classes and helpers that the conformance suite appends."""

from __future__ import annotations

import uuid
from datetime import datetime

from tidings.domain.envelope import Envelope
from tidings.domain.events import Event
from tidings.runtime.codec import Codec


class ItemAdded(Event, topic="conformance.item.added", type="conformance.ItemAdded"):
    cart_id: str
    sku: str
    quantity: int = 1


class CartCheckedOut(Event, topic="conformance.cart.checked_out", type="conformance.CartCheckedOut"):
    cart_id: str
    total: int


class AuditNoted(Event, topic="conformance.audit", type="conformance.AuditNoted"):
    text: str


codec = Codec(source="conformance")


def unique(prefix: str) -> str:
    """A stream name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def items(cart_id: str, count: int, *, time: datetime | None = None) -> list[Envelope]:
    return [
        codec.encode(ItemAdded(cart_id=cart_id, sku=f"sku-{n}", quantity=n + 1), time=time)
        for n in range(count)
    ]


class Ping(Event, topic="conformance.bus.ping", type="conformance.Ping"):
    key: str
    n: int


class Pong(Event, topic="conformance.bus.pong", type="conformance.Pong"):
    key: str
    n: int


class Alarm(Event, topic="conformance.alarm.raised", type="conformance.Alarm"):
    level: int
