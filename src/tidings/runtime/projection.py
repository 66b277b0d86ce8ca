"""Projections: read models fed from the global log.

A projection keeps its own checkpoint in the store and writes its documents in the same
transaction as that checkpoint, one transaction per batch of events: after a crash it resumes
exactly where its last committed write left it, never applying an event twice or skipping one.
Rebuilding clears its documents and replays the log from position 0.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import msgspec

from tidings.domain.envelope import Stored
from tidings.domain.events import Erased, Event
from tidings.domain.topics import validate_pattern
from tidings.ports import EventStore, StoreTransaction
from tidings.runtime.codec import Codec

T = TypeVar("T")


class View:
    """The documents of one projection, read and written inside the batch's transaction."""

    def __init__(self, transaction: StoreTransaction, collection: str) -> None:
        self._tx = transaction
        self._collection = collection

    async def get(self, key: str, type: type[T]) -> T | None:
        value = await self._tx.get_document(self._collection, key)
        return None if value is None else msgspec.json.decode(value, type=type)

    async def put(self, key: str, value: Any) -> None:
        await self._tx.put_document(self._collection, key, msgspec.json.encode(value))

    async def delete(self, key: str) -> None:
        await self._tx.delete_document(self._collection, key)


class Projection:
    """Base of read models. Set ``name`` and ``pattern``; implement ``handle``."""

    name: ClassVar[str]
    pattern: ClassVar[str] = ">"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "pattern" in cls.__dict__:
            validate_pattern(cls.pattern)

    async def handle(self, stored: Stored[Event], view: View) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement handle(stored, view)")


def checkpoint_name(projection: Projection) -> str:
    return f"projection:{projection.name}"


async def run_projection(
    store: EventStore, codec: Codec, projection: Projection, *, batch_size: int = 500
) -> int:
    """Feed the projection every event after its checkpoint; returns how many it handled."""
    name = checkpoint_name(projection)
    handled = 0
    while True:
        after = await store.get_checkpoint(name)
        batch = [
            record
            async for record in store.read_log(
                after=after, pattern=projection.pattern, batch_size=batch_size, limit=batch_size
            )
        ]
        if not batch:
            return handled
        async with store.transaction() as tx:
            # Another runner may have moved the checkpoint since we read it: then this batch is
            # not ours to apply, and the loop reads again from where that runner left off.
            if await tx.get_checkpoint(name) != after:
                continue
            view = View(tx, projection.name)
            for record in batch:
                stored = codec.stored(record)
                if not isinstance(stored.event, Erased):  # shredded: its data is gone
                    await projection.handle(stored, view)
            await tx.set_checkpoint(name, batch[-1].position)
        handled += len(batch)


async def reset_projection(store: EventStore, projection: Projection) -> None:
    """Drop the projection's documents and checkpoint, so that it replays from position 0."""
    async with store.transaction() as tx:
        await tx.clear_collection(projection.name)
        await tx.set_checkpoint(checkpoint_name(projection), 0)
