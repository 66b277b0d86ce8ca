"""Reading a partition of the stream: batched direct gets, decoded into recorded events.

A direct get (``$JS.API.DIRECT.GET.<stream>`` with ``next_by_subj`` and ``batch``) returns up to
``batch`` stored messages from a sequence on, filtered by subject, then an end-of-batch status.
It keeps no state on the server: a partition's position is the group's checkpoint in the store,
written in the same transaction as the handler's effects, so JetStream's own consumer
acknowledgements would add nothing but a second, weaker cursor.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, Undecodable, from_binary
from tidings.errors import BackendUnavailable, MalformedEvent

READ_TIMEOUT: Final = 5.0
_END_OF_BATCH: Final = ("204", "404")  # EOB, or nothing (more) at or after the sequence
_MAX_ID: Final = 200  # characters of a foreign message's id kept in its dead letter


class _Batch:
    __slots__ = ("done", "limit", "messages")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[Msg] = []
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()


class DirectReader:
    """Concurrent direct gets over one connection: each request has its own reply subject under
    one wildcard subscription, so partitions read in parallel without a subscription each."""

    def __init__(self, client: Client, stream: str, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._api = f"$JS.API.DIRECT.GET.{stream}"
        self._stream = stream
        self._inbox = client.new_inbox()
        self._tokens = itertools.count()
        self._pending: dict[str, _Batch] = {}
        self._subscription: Subscription | None = None

    @classmethod
    async def start(cls, client: Client, stream: str, prefix: str) -> DirectReader:
        reader = cls(client, stream, prefix)
        reader._subscription = await client.subscribe(f"{reader._inbox}.*", cb=reader._deliver)
        return reader

    async def read(
        self, partition: int, *, after: int, limit: int, max_size: int = DEFAULT_MAX_SIZE
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of the partition after stream sequence ``after``."""
        subject = f"{self._prefix}.{partition}.>"
        token = str(next(self._tokens))
        batch = self._pending[token] = _Batch(limit)
        request = msgspec.json.encode({"seq": after + 1, "next_by_subj": subject, "batch": limit})
        try:
            await self._client.publish(self._api, request, reply=f"{self._inbox}.{token}")
            problem = await asyncio.wait_for(batch.done, READ_TIMEOUT)
        finally:
            del self._pending[token]
        if problem is not None:
            raise BackendUnavailable(f"JetStream stream {self._stream!r} refused a read: {problem}")
        return [record_of(message, self._prefix, max_size) for message in batch.messages]

    async def _deliver(self, message: Msg) -> None:
        batch = self._pending.get(message.subject.rpartition(".")[2])
        if batch is None or batch.done.done():
            return  # the answer to a read that timed out
        status = (message.headers or {}).get("Status")
        if status is None:
            batch.messages.append(message)
            if len(batch.messages) >= batch.limit:
                batch.done.set_result(None)
        elif status in _END_OF_BATCH:
            batch.done.set_result(None)
        else:
            description = (message.headers or {}).get("Description", "")
            batch.done.set_result(f"status {status} {description}".strip())


def record_of(message: Msg, prefix: str, max_size: int) -> RecordedEvent:
    """The recorded event a stored message holds, or ``Undecodable`` saying why it is none."""
    headers = dict(message.headers or {})
    sequence = int(headers.get("Nats-Sequence", "0"))
    subject = headers.get("Nats-Subject", "")
    topic = subject[len(prefix) + 1 :].partition(".")[2]  # <prefix>.<partition>.<topic>
    stream = headers.get("Tidings-Stream", "")
    body = message.data or b""
    try:
        version = int(headers.get("Tidings-Version", "0"))
        envelope = from_binary(headers, body, max_size=max_size)
        if envelope.topic != topic:
            raise MalformedEvent(
                f"event {envelope.id}: topic {envelope.topic!r} was sent on subject {subject!r}"
            )
    except (MalformedEvent, ValueError) as exc:
        stand_in = Envelope(
            id=headers.get("ce-id", "")[:_MAX_ID] or f"nats:{sequence}",
            source=headers.get("ce-source", "")[:_MAX_ID] or "unknown",
            type=headers.get("ce-type", "")[:_MAX_ID] or "unknown",
            topic=topic,
            time=datetime.now(UTC),
            data=body,
        )
        error = f"message {sequence} on {subject!r} is no valid event: {exc}"
        return Undecodable(stand_in, stream, 0, sequence, error=error)
    return RecordedEvent(envelope, stream, version, sequence)
