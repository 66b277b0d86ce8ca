"""Messages anyone may publish on a partition's subject, end to end: each becomes a dead letter
and the partition goes on to the next event (a real nats-server, and PostgreSQL, whose text
columns refuse a NUL)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tidings import Context, Event
from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url, fresh_postgres_database

TOPIC = "hostile.order.shipped"
TYPE = "com.example.hostile.shipped"
BINARY = {"ce-specversion": "1.0", "ce-source": "s", "ce-type": TYPE}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
DEEP = b"[" * 200_000


class HostileShipped(Event, topic=TOPIC, type=TYPE):
    order: str


def _document(**members: object) -> bytes:
    return json.dumps({"specversion": "1.0", "source": "s", "type": TYPE, **members}).encode()


HOSTILE = {
    "nul-id-binary": (b'{"order":"o-1"}', {**BINARY, "ce-id": "evil%00id"}),
    "nul-id-structured": (_document(id="evil\u0000id", data={"order": "o-1"}), STRUCTURED),
    "line-break-in-subject": (b'{"order":"o-1"}', {**BINARY, "ce-id": "e-2", "ce-subject": "a%0Ab"}),
    "deep-body": (DEEP, {**BINARY, "ce-id": "e-3"}),
    # A valid event whose handler fails with a message that quotes its data, NUL included.
    "nul-in-handler-error": (b'{"order":"bad\\u0000x"}', {**BINARY, "ce-id": "e-5"}),
    "deep-data-base64": (
        _document(id="e-4", data_base64=base64.b64encode(b"[" * 200_000).decode()),
        STRUCTURED,
    ),
}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hostile.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_a_hostile_message_is_dead_lettered_and_the_partition_goes_on(
    store: str, nats_url: str, case: str
) -> None:
    bus = fresh_bus_url(nats_url)
    prefix = bus.split("prefix=", 1)[1].split("&", 1)[0]
    app = App("hostile-reader", store=store, bus=bus)
    handled: list[str] = []

    @app.subscribe("hostile.>", group="reader")
    async def read(event: HostileShipped, ctx: Context) -> None:
        if event.order.startswith("bad"):
            raise ValueError(f"no such order {event.order}")
        handled.append(event.order)

    client = await nats.connect(nats_url)
    try:
        async with app, app.running(lease_ttl=2.0, poll=0.2):
            subject = f"{prefix}.{Partitioner(app.store.feed.partitions)('k')}.{TOPIC}"
            body, headers = HOSTILE[case]
            await client.jetstream().publish(subject, body, headers=headers)
            await client.jetstream().publish(subject, b'{"order":"o-2"}', headers={**BINARY, "ce-id": "good"})
            await eventually(lambda: handled == ["o-2"], within=20)
            (letter,) = await app.dead_letters("reader")
            assert letter.reason == ("failed" if case == "nul-in-handler-error" else "malformed")
            assert "\x00" not in (letter.event_id or "") and "\n" not in letter.error
    finally:
        await client.close()
