"""Load for the store fault tests: a producer that retries each event under its own id until the
store acknowledges it, a consumer group that applies each event's effect through the unit of
work, and the count of lost, duplicated and out-of-order effects."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tidings.app import App
from tidings.domain.ids import uuid7
from tidings.errors import BackendUnavailable
from tidings.runtime.context import Context
from tidings.testing.conformance.events import Ping
from tidings.testing.plugin import missing
from tidings.testing.servers import EmbeddedServer, embedded_server

GROUP = "store-faults"


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[EmbeddedServer]:
    """A PostgreSQL server of the test's own, which it may crash or give a tablespace; skipped
    when none can be started (an error with ``CI`` set)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(embedded_server())
        except RuntimeError as exc:
            missing(f"no throwaway PostgreSQL: {exc}")
        yield server


def consuming_app(name: str, store_url: str, bus_url: str | None = None) -> App:
    """An App whose group appends each ``Ping``'s ``n`` to its key's effects document."""
    app = App(name, store=store_url, bus=bus_url)

    @app.subscribe("conformance.bus.ping", group=GROUP, batch_size=20)
    async def apply(event: Ping, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            seen = await uow.get("effects", event.key, list[int]) or []
            uow.put("effects", event.key, [*seen, event.n])

    return app


@dataclass
class Producer:
    """Publishes ``Ping(key, n)`` for n = 0, 1, ... round robin over ``keys``; an event the store
    refused is published again under the same id, so that a retry of an append that did commit
    is the stored no-op, never a second event."""

    app: App
    keys: int
    acknowledged: list[str] = field(default_factory=list)
    refusals: list[BackendUnavailable] = field(default_factory=list)
    refused_ids: set[str] = field(default_factory=set)
    last_refusal: float = 0.0
    first_ack_after_refusal: float = 0.0

    async def publish(self, n: int, key: int, *, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Publish one event, retrying while the store refuses; False if ``give_up`` said so."""
        event_id = uuid7()
        while True:
            try:
                await self.app.publish(Ping(key=f"key-{key}", n=n), key=f"key-{key}", id=event_id)
            except BackendUnavailable as refused:
                self.refusals.append(refused)
                self.refused_ids.add(event_id)
                self.last_refusal = time.monotonic()
                if give_up():
                    return False
                await asyncio.sleep(0.05)
                continue
            if self.last_refusal and not self.first_ack_after_refusal:
                self.first_ack_after_refusal = time.monotonic()
            self.refused_ids.discard(event_id)
            self.acknowledged.append(event_id)
            return True


@dataclass(frozen=True)
class Counts:
    lost: int
    duplicated: int
    out_of_order: int

    def __str__(self) -> str:
        return f"lost={self.lost} duplicated={self.duplicated} out_of_order={self.out_of_order}"


def count_faults(applied: dict[str, list[int]], per_key: int) -> Counts:
    """Compare each key's applied ``n`` with 0 .. per_key-1 applied once each, in order."""
    lost = duplicated = out_of_order = 0
    for values in applied.values():
        lost += len(set(range(per_key)) - set(values))
        duplicated += len(values) - len(set(values))
        out_of_order += sum(1 for a, b in itertools.pairwise(values) if b < a)
    return Counts(lost, duplicated, out_of_order)
