"""Reading a partition: batched direct gets on the partition's stream, decoded into recorded
events.

A direct get (``$JS.API.DIRECT.GET.<stream>`` with ``seq``, ``next_by_subj`` and ``batch``)
returns up to ``batch`` stored messages from a sequence on, then an end-of-batch status. It keeps
no state on the server: a partition's position is the group's checkpoint in the store, written in
the same transaction as the handler's effects, so JetStream's own consumer acknowledgements would
add nothing but a second, weaker cursor.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from tidings.adapters.nats.inbox import Inbox
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, Undecodable, from_binary
from tidings.errors import BackendUnavailable, MalformedEvent

READ_TIMEOUT: Final = 5.0
STREAM_HEADER: Final = "Tidings-Stream"
VERSION_HEADER: Final = "Tidings-Version"
POSITION_HEADER: Final = "Tidings-Position"
_END_OF_BATCH: Final = ("204", "404")  # EOB, or nothing (more) at or after the sequence
_MAX_ID: Final = 200  # characters of a foreign message's id kept in its dead letter


async def direct_get(
    client: Client, inbox: Inbox, stream: str, request: dict[str, object], limit: int
) -> list[Msg]:
    """The messages a direct get request returns (up to ``limit``)."""
    messages: list[Msg] = []
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def on_reply(message: Msg) -> None:
        if done.done():
            return
        status = (message.headers or {}).get("Status")
        if status is None:
            messages.append(message)
            if len(messages) >= limit:
                done.set_result(None)
        elif status in _END_OF_BATCH:
            done.set_result(None)
        else:
            description = str((message.headers or {}).get("Description", "")).splitlines()[:1]
            done.set_result(" ".join(["status", status, *description]))

    reply, forget = inbox.reply_to(on_reply)
    try:
        await client.publish(f"$JS.API.DIRECT.GET.{stream}", msgspec.json.encode(request), reply=reply)
        problem = await asyncio.wait_for(done, READ_TIMEOUT)
    finally:
        forget()
    if problem is not None:
        raise BackendUnavailable(f"JetStream stream {stream!r} refused a read: {problem}")
    return messages


def record_of(message: Msg, prefix: str, max_size: int = DEFAULT_MAX_SIZE) -> RecordedEvent:
    """The recorded event a stored message holds, or ``Undecodable`` saying why it is none."""
    headers = dict(message.headers or {})
    sequence = int(headers.get("Nats-Sequence", "0"))
    subject = headers.get("Nats-Subject", "")
    topic = subject[len(prefix) + 1 :].partition(".")[2]  # <prefix>.<partition>.<topic>
    stream = headers.get(STREAM_HEADER, "")
    body = message.data or b""
    try:
        version = int(headers.get(VERSION_HEADER, "0"))
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
