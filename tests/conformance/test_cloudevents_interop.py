"""CloudEvents as other SDKs read them: the official ``cloudevents`` SDK against real JetStream
messages, both ways, in both content modes, with '%' and non-ASCII text in the subject and in an
extension.

The SDK has no NATS binding, so its HTTP messages are carried over as the NATS binding says: the
same ``ce-*`` headers, percent-encoded alike, except that ``datacontenttype`` is
``ce-datacontenttype`` (HTTP puts it in ``Content-Type``, which on NATS means structured mode).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.aio.client import Client

from tidings import Context, Event, Retry
from tidings.adapters.sql.common import Partitioner
from tidings.app import App
from tidings.domain.envelope import JSON, RecordedEvent
from tidings.domain.headers import percent_decode
from tidings.testing.conformance.bus import RUN
from tidings.testing.eventually import eventually
from tidings.testing.plugin import fresh_bus_url

SUBJECT = "order%2042 \u00e9t\u00e9 \u2603"  # a '%' that must stay one, and non-ASCII
TENANT = 'caf\u00e9 %25 "q" \U0001f600'
STREAM = "commande-\u00e9t\u00e9 %41"
TOPIC = "interop.order.shipped"


class Shipped(Event, topic=TOPIC, type="com.example.interop.shipped"):
    order: str


@pytest.fixture
async def raw_client(nats_url: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_url, connect_timeout=5)
    yield client
    await client.close()


def sdk_event(order: str, **attributes: Any) -> CloudEvent:
    """An event as a producer made with the SDK sends it: no ``topic``, an extension."""
    return CloudEvent(
        {
            "type": "com.example.interop.shipped",
            "source": "/shop/\u00e9t\u00e9",
            "subject": SUBJECT,
            "datacontenttype": JSON,
            "comexampletenant": TENANT,
            **attributes,
        },
        {"order": order},
    )


def http_to_nats(message: ce_http.HTTPMessage) -> dict[str, str]:
    """SDK binary-mode HTTP headers as NATS headers (NATS binding §3.1.3.1)."""
    return {
        ("ce-datacontenttype" if k.lower() == "content-type" else k): v for k, v in message.headers.items()
    }


def nats_to_http(headers: dict[str, str]) -> dict[str, str]:
    """NATS binary-mode headers as HTTP headers, for the SDK to read (the reverse)."""
    http = {k: v for k, v in headers.items() if k.lower().startswith("ce-")}
    if "ce-datacontenttype" in http:
        http["content-type"] = percent_decode(http.pop("ce-datacontenttype"))
    return http


def _parts(bus_url: str) -> tuple[str, str]:
    stream, prefix = bus_url.split("stream=")[1].split("&prefix=")
    return stream, prefix


async def test_events_made_with_the_sdk_reach_a_tidings_group(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    app = App("interop-reader", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)
    got: list[tuple[Shipped, RecordedEvent]] = []

    @app.subscribe("interop.>", group="reader")
    async def read(event: Shipped, ctx: Context) -> None:
        got.append((event, ctx.record))

    binary = sdk_event("o-1", id="sdk-binary")
    binary_message = ce_http.to_binary(binary, JSONFormat())
    # A producer that sets no time (optional in CloudEvents; the SDK adds one, so it is dropped).
    timeless_headers = http_to_nats(ce_http.to_binary(sdk_event("o-2", id="sdk-timeless"), JSONFormat()))
    del timeless_headers["ce-time"]
    structured = sdk_event(
        "o-3", id="sdk-structured", datacontenttype="application/json; charset=utf-8", sampledrate=7
    )
    structured_message = ce_http.to_structured(structured, JSONFormat())
    async with app, app.running(**RUN):
        subject = f"{prefix}.{Partitioner(app.store.feed.partitions)('k')}.{TOPIC}"
        js = raw_client.jetstream()
        before = datetime.now(UTC)
        await js.publish(subject, binary_message.body, headers=http_to_nats(binary_message))
        await js.publish(subject, b'{"order":"o-2"}', headers=timeless_headers)
        await js.publish(subject, structured_message.body, headers=dict(structured_message.headers))
        await eventually(lambda: len(got) == 3)
        after = datetime.now(UTC)
        letters = await app.dead_letters("reader")
    assert letters == []
    assert [event for event, _ in got] == [Shipped(order="o-1"), Shipped(order="o-2"), Shipped(order="o-3")]
    envelopes = [record.envelope for _, record in got]
    for envelope, made in zip(envelopes, (binary, None, structured), strict=True):
        assert envelope.topic == TOPIC  # from the registered type: the SDK sends none
        assert envelope.subject == SUBJECT
        assert envelope.source == "/shop/\u00e9t\u00e9"
        assert envelope.extensions["comexampletenant"] == TENANT
        assert envelope.datacontenttype == JSON
        if made is not None:
            assert envelope.id == made.get_id() and envelope.time == made.get_time()
    # Without a time of its own, an event has the time JetStream stored it.
    assert before <= envelopes[1].time <= after
    # Structured mode keeps an Integer extension an integer; binary mode carries strings.
    assert envelopes[2].extensions["sampledrate"] == 7


async def test_the_sdk_reads_what_tidings_publishes(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    bus_url = fresh_bus_url(nats_url)
    stream, _ = _parts(bus_url)
    app = App("interop-producer", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)
    consumed: list[RecordedEvent] = []

    @app.subscribe(TOPIC, group="echo")
    async def echo(event: Shipped, ctx: Context) -> None:
        consumed.append(ctx.record)

    async with app:
        published = await app.publish(Shipped(order="o-42"), key=SUBJECT)
        with_extensions = app.codec.encode(Shipped(order="o-43"), subject=SUBJECT, partition_key="k")
        with_extensions = msgspec.structs.replace(
            with_extensions, extensions={"comexampletenant": TENANT, "sampledrate": 7, "flagged": True}
        )
        (appended,) = await app.store.append(STREAM, [with_extensions])
        async with app.running(**RUN):
            await eventually(lambda: len(consumed) == 2)
        messages = await _messages(raw_client, stream, app.store.feed.partitions)
    assert len(messages) == 2
    for headers, _ in messages:
        assert all(re.fullmatch(r"[!#-~]*", value) for value in headers.values()), headers
    sdk = {event.get_id(): event for event in (_sdk_read(headers, body) for headers, body in messages)}
    for record in (published, appended):
        event = sdk[record.envelope.id]
        envelope = record.envelope
        assert event.get_type() == "com.example.interop.shipped"
        assert event.get_source() == "interop-producer"
        assert event.get_subject() == SUBJECT
        assert event.get_time() == envelope.time
        assert event.get_datacontenttype() == JSON
        assert event.get_extension("topic") == TOPIC
        assert event.get_data() == msgspec.json.decode(envelope.data)
    extended = sdk[appended.envelope.id]
    assert extended.get_extension("comexampletenant") == TENANT
    assert extended.get_extension("sampledrate") == "7"  # binary mode carries strings
    assert extended.get_extension("flagged") == "true"
    assert sdk[published.envelope.id].get_extension("partitionkey") == SUBJECT
    # And tidings reads its own messages back whole: stream names and extensions included.
    by_id = {record.envelope.id: record for record in consumed}
    assert by_id[published.envelope.id].stream == SUBJECT
    assert by_id[appended.envelope.id].stream == STREAM
    assert by_id[appended.envelope.id].envelope.extensions == {
        "comexampletenant": TENANT,
        "sampledrate": "7",
        "flagged": "true",
    }


async def test_the_sdk_reads_tidings_structured_form_of_a_foreign_event(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    """A dead letter keeps the event in tidings' structured form (in SQL): extensions included."""
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    app = App("interop-letters", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)

    @app.subscribe(TOPIC, group="failing", retry=Retry(attempts=1))
    async def fail(event: Shipped, ctx: Context) -> None:
        raise RuntimeError("refused")

    made = sdk_event("o-9", id="sdk-letter", sampledrate=7)
    message = ce_http.to_binary(made, JSONFormat())
    async with app, app.running(**RUN):
        subject = f"{prefix}.{Partitioner(app.store.feed.partitions)('k')}.{TOPIC}"
        await raw_client.jetstream().publish(subject, message.body, headers=http_to_nats(message))

        async def lettered() -> bool:
            return len(await app.dead_letters("failing")) == 1

        await eventually(lettered)
        (letter,) = await app.dead_letters("failing")
    assert letter.envelope is not None
    document = ce_http.HTTPMessage({"content-type": "application/cloudevents+json"}, letter.envelope)
    event = ce_http.from_structured(document, JSONFormat())
    assert event.get_id() == "sdk-letter" and event.get_time() == made.get_time()
    assert event.get_subject() == SUBJECT
    assert event.get_extension("comexampletenant") == TENANT
    assert event.get_extension("sampledrate") == "7"  # it came in binary mode: a string
    assert event.get_extension("topic") == TOPIC
    assert event.get_data() == {"order": "o-9"}


async def test_messages_published_before_the_binding_still_decode(
    tmp_path: Path, nats_url: str, raw_client: Client
) -> None:
    """What tidings wrote before: Content-Type for datacontenttype, values not percent-encoded."""
    bus_url = fresh_bus_url(nats_url)
    _, prefix = _parts(bus_url)
    app = App("interop-old", store=f"sqlite:///{tmp_path / 's.db'}", bus=bus_url)
    got: list[RecordedEvent] = []

    @app.subscribe(TOPIC, group="reader")
    async def read(event: Shipped, ctx: Context) -> None:
        got.append(ctx.record)

    old_headers = {
        "content-type": JSON,
        "ce-id": "old-1",
        "ce-source": "old-service",
        "ce-type": "com.example.interop.shipped",
        "ce-topic": TOPIC,
        "ce-time": "2024-05-06T07:08:09.123456Z",
        "ce-subject": "order%2042",
        "ce-specversion": "1.0",
        "Nats-Msg-Id": "old-1",
        "Tidings-Stream": "order%2042",
        "Tidings-Version": "3",
        "Tidings-Position": "17",
    }
    async with app, app.running(**RUN):
        subject = f"{prefix}.{Partitioner(app.store.feed.partitions)('order%2042')}.{TOPIC}"
        await raw_client.jetstream().publish(subject, b'{"order":"o-1"}', headers=old_headers)
        await eventually(lambda: len(got) == 1)
    (record,) = got
    assert record.envelope.subject == "order%2042" and record.stream == "order%2042"
    assert record.version == 3


async def _messages(client: Client, stream: str, partitions: int) -> list[tuple[dict[str, str], bytes]]:
    js = client.jetstream()
    found = []
    for partition in range(partitions):
        state = (await js.stream_info(f"{stream}_{partition}")).state
        for sequence in range(state.first_seq, state.last_seq + 1 if state.messages else 0):
            message = await js.get_msg(f"{stream}_{partition}", sequence)
            found.append((dict(message.headers or {}), message.data or b""))
    return found


def _sdk_read(headers: dict[str, str], body: bytes) -> BaseCloudEvent:
    return ce_http.from_binary(ce_http.HTTPMessage(nats_to_http(headers), body), JSONFormat())
