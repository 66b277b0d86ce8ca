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
import contextlib
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from tidings.adapters.nats.inbox import Inbox
from tidings.domain.attributes import escape_controls
from tidings.domain.binary import from_message
from tidings.domain.envelope import DEFAULT_MAX_SIZE, Envelope, RecordedEvent, TopicOf, Undecodable
from tidings.domain.headers import percent_decode
from tidings.domain.names import has_refused_control
from tidings.errors import BackendUnavailable, MalformedEvent

READ_TIMEOUT: Final = 5.0
STREAM_HEADER: Final = "Tidings-Stream"
VERSION_HEADER: Final = "Tidings-Version"
POSITION_HEADER: Final = "Tidings-Position"
#: On a stand-in the relay published for an event too large for the server: "<size> <max_payload>".
TOO_LARGE_HEADER: Final = "Tidings-Too-Large"
_END_OF_BATCH: Final = ("204", "404")  # EOB, or nothing (more) at or after the sequence
_MAX_ID: Final = 200  # characters of a foreign message's id kept in its dead letter
_StoredAt = Annotated[datetime, msgspec.Meta(tz=True)]


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


def record_of(
    message: Msg, prefix: str, max_size: int = DEFAULT_MAX_SIZE, topic_of: TopicOf | None = None
) -> RecordedEvent:
    """The recorded event a stored message holds, or ``Undecodable`` saying why it is none.

    The message may come from another producer, in either content mode: one without ``topic``
    gets its registered type's (``topic_of``), one without ``time`` the time JetStream stored it.
    Messages that tidings published before it followed the NATS binding (``Tidings-Stream`` but
    no ``ce-datacontenttype``) are read as written then, their values not percent-encoded.
    """
    headers = dict(message.headers or {})
    sequence = int(headers.get("Nats-Sequence", "0"))
    subject = headers.get("Nats-Subject", "")
    topic = subject[len(prefix) + 1 :].partition(".")[2]  # <prefix>.<partition>.<topic>
    body = message.data or b""
    legacy = STREAM_HEADER in headers and not any(k.lower() == "ce-datacontenttype" for k in headers)
    stream = headers.get(STREAM_HEADER, "")
    try:
        if not legacy:
            stream = percent_decode(stream)
        if has_refused_control(stream):  # DEL and C1 pass: stream names may hold them (names.py)
            raise MalformedEvent(f"header {STREAM_HEADER!r} holds a control character")
        version = int(headers.get(VERSION_HEADER, "0"))
        if TOO_LARGE_HEADER in headers:
            size, _, limit = headers[TOO_LARGE_HEADER].partition(" ")
            raise MalformedEvent(
                f"the event stored at version {version} of stream {stream!r} was not published: its "
                f"message of {size[:20]} bytes exceeds the server's max_payload of {limit[:20]} bytes"
            )
        envelope = from_message(
            headers,
            body,
            max_size=max_size,
            topic_of=topic_of,
            received=_stored_at(headers.get("Nats-Time-Stamp")),
            legacy=legacy,
        )
        if envelope.topic != topic:
            raise MalformedEvent(
                f"event {envelope.id}: topic {envelope.topic!r} was sent on subject {subject!r}"
            )
    except Exception as exc:
        # Anyone may publish: a message that cannot be read must become a dead letter, never
        # an error that stops its partition (MalformedEvent, a HeaderError, and whatever a
        # decoder may raise on input nobody foresaw).
        stand_in = Envelope(
            id=_shown(headers, "ce-id") or f"nats:{sequence}",
            source=_shown(headers, "ce-source") or "unknown",
            type=_shown(headers, "ce-type") or "unknown",
            topic=escape_controls(topic),
            time=datetime.now(UTC),
            data=body,
        )
        error = escape_controls(f"message {sequence} on {subject!r} is no valid event: {exc}")
        return Undecodable(stand_in, escape_controls(stream), 0, sequence, error=error)
    return RecordedEvent(envelope, stream, version, sequence)


def _stored_at(stamp: str | None) -> datetime:
    """When JetStream stored a message (its ``Nats-Time-Stamp``, RFC 3339 in nanoseconds): the
    time of an event that carries none, the same on every read. Now if the server gave none."""
    if stamp:
        with contextlib.suppress(msgspec.ValidationError):
            moment: datetime = msgspec.convert(stamp, _StoredAt)
            return moment
    return datetime.now(UTC)


def _shown(headers: dict[str, str], name: str) -> str:
    """A header of a message that is no valid event, as far as it can be read (for its dead
    letter): in any case, percent-decoded if it can be, cut short."""
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = percent_decode(value)
            return escape_controls(value[:_MAX_ID])
    return ""
