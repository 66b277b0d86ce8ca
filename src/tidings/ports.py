"""The ports: small protocols that the runtime is written against and adapters implement."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Final, Literal, Protocol

import msgspec

from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.domain.integrity import IntegrityReport

ANY: Final = "any"
NO_STREAM: Final = "no-stream"
#: ``ANY`` skips the check, ``NO_STREAM`` (or 0) requires a new stream, a number the exact version.
ExpectedVersion = int | Literal["any", "no-stream"]


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    version: int
    first_time: datetime
    last_time: datetime


class Snapshot(msgspec.Struct, frozen=True):
    """An aggregate's state as of ``version`` of its stream; ``schema`` names the state's shape."""

    stream: str
    version: int
    schema: str
    time: datetime
    state: bytes


class StoreTransaction(Protocol):
    """One transaction on the store: appends, documents and checkpoints commit together."""

    async def append(
        self, stream: str, envelopes: Sequence[Envelope], *, expected_version: ExpectedVersion = ANY
    ) -> list[RecordedEvent]: ...

    async def get_document(self, collection: str, key: str) -> bytes | None: ...

    async def put_document(self, collection: str, key: str, value: bytes) -> None: ...

    async def delete_document(self, collection: str, key: str) -> None: ...

    async def clear_collection(self, collection: str) -> None: ...

    async def get_checkpoint(self, name: str) -> int: ...

    async def set_checkpoint(self, name: str, position: int) -> None: ...


class EventStore(Protocol):
    """An append-only store of streams whose events also form one totally ordered log."""

    url: str

    async def open(self) -> None:
        """Connect and create the schema if missing. Idempotent."""

    async def close(self) -> None: ...

    async def append(
        self, stream: str, envelopes: Sequence[Envelope], *, expected_version: ExpectedVersion = ANY
    ) -> list[RecordedEvent]:
        """Append atomically; an envelope whose id is stored already is returned, not repeated."""

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        at: datetime | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream, checked against their hash chain as they are read.

        ``at`` reads the stream as of a time: the longest prefix of its history whose events all
        happened by then."""

    async def read_from_snapshot(
        self, stream: str, *, to_version: int | None = None, at: datetime | None = None
    ) -> tuple[Snapshot | None, list[RecordedEvent]]:
        """The newest snapshot within the bounds and the events after it, in one round trip."""

    def read_log(
        self,
        *,
        after: int = 0,
        pattern: str | None = None,
        batch_size: int = 1000,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """The global log after a position, in batches, streamed (memory stays flat)."""

    async def head_position(self) -> int: ...

    async def stream_version(self, stream: str) -> int: ...

    async def list_streams(self, *, prefix: str = "", limit: int | None = None) -> list[StreamInfo]: ...

    async def save_snapshot(self, snapshot: Snapshot) -> None: ...

    async def load_snapshot(
        self, stream: str, *, max_version: int | None = None, at: datetime | None = None
    ) -> Snapshot | None: ...

    async def get_document(self, collection: str, key: str) -> bytes | None: ...

    async def get_checkpoint(self, name: str) -> int: ...

    def transaction(self) -> AbstractAsyncContextManager[StoreTransaction]: ...

    async def verify(self) -> IntegrityReport:
        """Check every stream's hash chain and the storage itself; report the first breaks."""
