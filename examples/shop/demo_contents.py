"""What the demo writes into its store, taken from the code that writes it, and the check that
a store holds nothing else.

Its events come from its own Apps (the demo's and its four services') and are of its own types
(the shop's events, the saga's and the demo's marks), in the streams it writes. Its services keep
documents in their collections, one per order; their consumer groups (and the saga's, and the
demo's watcher) keep checkpoints, leases, an inbox and dead letters; the saga keeps timers on its
instances' streams. Whatever else a store holds was written by someone else, and a store that
holds it is not the demo's to replace.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import tidings
from examples.shop import events, inventory, orders, payments, shipping
from examples.shop.inventory import Stock
from examples.shop.orders import fulfilment
from examples.shop.summary import SKUS
from tidings.adapters.sql.consumers import group_checkpoint
from tidings.domain import saga
from tidings.domain.envelope import Envelope, from_structured
from tidings.domain.saga import SagaInstance
from tidings.runtime.keyring import CHECK_SCOPE

#: The App that marks the store, places the orders and watches the sagas end.
DEMO_APP = "shop-demo"
#: The demo's watcher: the consumer group that counts the sagas that ended.
WATCH_GROUP = "demo-watch"
MARK_STREAM = "shop-demo"
ORDER_PREFIX = "order-"
SERVICE_MODULES = (orders, inventory, payments, shipping)
#: The services, each a ``tidings run`` worker of ``examples.shop.<service>:app``.
SERVICES = tuple(module.__name__.rpartition(".")[2] for module in SERVICE_MODULES)
#: The document collections the services keep (one document per order in each).
COLLECTIONS = frozenset({inventory.RESERVATIONS, payments.LEDGERS, shipping.SHIPMENTS})


class DemoStoreMade(tidings.Event, topic="shop.demo.made", type="shop.DemoStoreMade"):
    """The first event of a store the demo made."""


class DemoRunEnded(tidings.Event, topic="shop.demo.ended", type="shop.DemoRunEnded"):
    """The last event of each run that ended (an interrupted run has none)."""

    orders: int


def order_id(number: int) -> str:
    """The id of the demo's ``number``-th order; its events are the stream of that name."""
    return f"{ORDER_PREFIX}{number:04d}"


def is_order(name: str) -> bool:
    digits = name.removeprefix(ORDER_PREFIX)
    return digits.isdigit() and order_id(int(digits)) == name


def demo_writes(stream: str) -> bool:
    """Whether the demo or its services write a stream of this name: the marks, the stock of its
    SKUs, an order (the order's events and its services' replies, keyed by the order's id) and
    the order's fulfilment saga."""
    if stream == MARK_STREAM or stream in {Stock.stream_of(sku) for sku in SKUS}:
        return True
    saga_prefix = SagaInstance.stream_of(f"{fulfilment.name}:")
    return is_order(stream.removeprefix(saga_prefix))


def _event_types(modules: Iterable[ModuleType]) -> frozenset[str]:
    """The types of the event classes the modules declare."""
    return frozenset(
        value.__event_type__
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, tidings.Event)
        and value.__module__ == module.__name__  # declared there, not imported
    )


#: Who writes the demo's events: the demo itself and its services (an event's ``source``).
SOURCES = frozenset({DEMO_APP, *(module.app.name for module in SERVICE_MODULES)})
#: What the demo's events are: the shop's, the saga's and the demo's marks (an event's ``type``).
EVENT_TYPES = _event_types((events, saga, sys.modules[__name__]))
#: The consumer groups that work on the demo's store: its services' (the saga's among them)
#: and the demo's watcher.
GROUPS = frozenset(
    {WATCH_GROUP, *(group for module in SERVICE_MODULES for group in module.app.subscriptions)}
)


def stranger(envelope: Envelope) -> str | None:
    """What is not the demo's about an event: its source or its type; None if it is the demo's."""
    if envelope.source not in SOURCES:
        return f"an event from {envelope.source!r}"
    if envelope.type not in EVENT_TYPES:
        return f"an event of type {envelope.type!r}"
    return None


#: One query against the store's database: its rows.
Query = Callable[[str], Sequence[Sequence[Any]]]


def strangers(query: Query, tables: Iterable[str]) -> list[str]:
    """What the store's tables hold that the demo does not write (each thing once, in words):
    documents, checkpoints, consumer group rows, timers, snapshots and keys. ``tables`` are the
    tables the store has (an older store may lack the newer ones)."""
    present = set(tables)
    found: list[str] = []

    def rows(table: str, columns: str) -> Sequence[Sequence[Any]]:
        return query(f"SELECT DISTINCT {columns} FROM {table}") if table in present else ()  # noqa: S608

    for collection, key in rows("tidings_documents", "collection, key"):
        if collection not in COLLECTIONS or not is_order(key):
            found.append(f"the document {collection}/{key}")
    for (name,) in rows("tidings_checkpoints", "name"):
        if not _own_checkpoint(name):
            found.append(f"the checkpoint {name}")
    for table in ("tidings_members", "tidings_leases", "tidings_inbox", "tidings_dead_letters"):
        groups = [group for (group,) in rows(table, "group_name") if group not in GROUPS]
        found += [f"the group {group} ({table})" for group in groups]
    for stream, envelope in rows("tidings_timers", "stream, envelope"):
        why = _timer_stranger(str(stream), bytes(envelope))
        if why:
            found.append(why)
    snapshots = [stream for (stream,) in rows("tidings_snapshots", "stream") if not demo_writes(stream)]
    found += [f"a snapshot of {stream}" for stream in snapshots]
    # Keys are there only when the shell held a master key; their scopes are the demo's streams
    # or its orders, besides the master key's own check.
    found += [
        f"a data key of {scope}"
        for (scope,) in rows("tidings_keys", "scope")
        if not (demo_writes(scope) or is_order(scope) or scope == CHECK_SCOPE)
    ]
    return list(dict.fromkeys(found))


def _own_checkpoint(name: str) -> bool:
    """A checkpoint of one of the demo's groups: in the store's log (``group:<group>:<partition>``)
    or, in distributed mode, on the bus (``group:<group>@nats:<stream>...``, named by the NATS
    log, whose adapter is not imported here: it needs nats-py)."""
    on_bus, _, _ = name.removeprefix("group:").partition("@nats:")
    if name.startswith("group:") and "@nats:" in name:
        return on_bus in GROUPS
    group, _, partition = name.removeprefix("group:").rpartition(":")
    return group in GROUPS and partition.isdigit() and group_checkpoint(group, int(partition)) == name


def _timer_stranger(stream: str, document: bytes) -> str | None:
    if not demo_writes(stream):
        return f"a timer on {stream}"
    try:
        envelope = from_structured(document, max_size=len(document) + 1)
    except tidings.TidingsError:
        return f"an unreadable timer on {stream}"
    why = stranger(envelope)
    return None if why is None else f"{why} (a timer on {stream})"


def own_tables(*, postgres: bool) -> frozenset[str]:
    """The tables of tidings' own schema, from the store adapter's statements that create them
    (the PostgreSQL adapter is imported only for a PostgreSQL store: it needs psycopg)."""
    if postgres:
        from tidings.adapters.postgres import schema
    else:
        from tidings.adapters.sqlite import schema  # type: ignore[no-redef]
    statements = " ".join((*schema.CREATE, *schema.CREATE_CONSUMERS))
    return frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", statements))
