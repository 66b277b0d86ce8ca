"""Publishing a partition's events in order, many in flight, each stored exactly once.

A partition has a stream of its own, and every message names the sequence its stream must be at
before it is stored (``Nats-Expected-Last-Sequence``). So a batch goes out pipelined, yet only a
prefix of it can ever be stored, in order: a message lost in a leader change makes every later
one of the batch fail its expectation instead of overtaking it. A second relay on the same
partition (one that lost its lease without knowing) fails the same way. After any failure the
publisher asks the stream where it stands (``resync``): the last message that tidings published
says, in ``Tidings-Position``, which event of the store's log the stream holds last, and
publishing continues after it, so nothing is published twice and the stream itself is the
relay's checkpoint.

Anyone may publish to a partition's subjects, so a message's word is not taken: a claim (the
position and the event id in ``Nats-Msg-Id``) counts only if the store holds that very event at
that position. Messages whose claim the store denies are passed over, however many there are: a
forged position must never make the relay skip events, and junk may cost time, never events.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from tidings.adapters.nats.inbox import Inbox
from tidings.adapters.nats.reads import POSITION_HEADER, STREAM_HEADER, TOO_LARGE_HEADER, VERSION_HEADER
from tidings.domain.envelope import Envelope, RecordedEvent
from tidings.errors import BackendUnavailable

log = logging.getLogger("tidings.nats")

ACK_TIMEOUT: Final = 10.0
#: A position as tidings writes it: ASCII digits, no more than a signed 64-bit column holds
#: (``str.isdigit`` also passes "²", which ``int`` refuses).
_POSITION: Final = re.compile(r"[1-9][0-9]{0,17}")

Message = tuple[str, bytes, dict[str, str]]
_SEQUENCE_HEADER: Final = "Nats-Expected-Last-Sequence"
#: What the sequence header adds to a message, at its widest (a 64-bit number).
SEQUENCE_HEADER_SIZE: Final = len(_SEQUENCE_HEADER) + len(": \r\n") + 20


def message_size(headers: dict[str, str], body: bytes) -> int:
    """How many bytes of a server's ``max_payload`` a message takes: its header block (as the
    client writes it: ``NATS/1.0``, a line per header, an empty line) and its body. The values
    are ASCII (percent-encoded), so characters are bytes."""
    lines = sum(len(name) + len(value) + 4 for name, value in headers.items())  # "k: v\r\n"
    return len("NATS/1.0\r\n") + lines + len("\r\n") + len(body)


#: The attributes that go into headers as text, and those that are times or a number.
_TIMES: Final = ("time", "expirytime")
_TEXT_ATTRIBUTES: Final = tuple(
    name
    for name in Envelope.__struct_fields__
    if name not in ("data", "extensions", "schemaversion", *_TIMES)
)
_text_of: Final = operator.attrgetter(*_TEXT_ATTRIBUTES)
#: What a message's headers take besides their text values, at the most: the header block's
#: frame, every attribute's line (``ce-<name>: \r\n``) with a time (RFC 3339, 27 characters,
#: percent-encoded at worst) or a 64-bit number as its value, and tidings' own lines, with a
#: version and a position of at most 19 digits.
_HEADERS_FRAME_BOUND: Final = (
    len("NATS/1.0\r\n\r\n")
    + sum(len(f"ce-{name}: \r\n") for name in Envelope.__struct_fields__)
    + 3 * 27 * len(_TIMES)
    + 20  # schemaversion
    + sum(len(f"{name}: \r\n") for name in ("Nats-Msg-Id", STREAM_HEADER, VERSION_HEADER, POSITION_HEADER))
    + 2 * 19
)
#: A character of a text value percent-encoded at worst: 4 bytes of UTF-8, each as ``%XY``.
_WORST_ENCODED: Final = 12


def headers_bound(stream: str, envelope: Envelope) -> int | None:
    """A cheap upper bound of what the headers of ``envelope``'s message in ``stream`` take of
    ``max_payload`` (None: the envelope has extensions, or values of other types: measure it)."""
    if envelope.extensions:
        return None
    try:
        text = "".join(filter(None, _text_of(envelope)))  # in C
    except TypeError:
        return None
    # The id twice (ce-id, Nats-Msg-Id), the stream name once.
    chars = len(text) + len(envelope.id) + len(stream)
    return _HEADERS_FRAME_BOUND + _WORST_ENCODED * chars


def stand_in(
    record: RecordedEvent, headers: dict[str, str], size: int, max_payload: int
) -> tuple[dict[str, str], bytes]:
    """What the relay publishes in place of an event too large for the server: where the event
    is stored and its identity, and no data; readers turn it into a dead letter that says so."""
    log.error(
        "relay: event %s at position %d (stream %r, version %d) makes a message of %d bytes, more "
        "than the server's max_payload of %d: a stand-in without its data is published in its "
        "place, which consumer groups dead-letter",
        record.envelope.id,
        record.position,
        record.stream,
        record.version,
        size,
        max_payload,
    )
    kept = ("ce-id", "ce-type", "ce-source", "ce-topic", "ce-specversion", "Nats-Msg-Id")
    kept_headers = {name: headers[name] for name in kept if name in headers}
    kept_headers[STREAM_HEADER] = headers[STREAM_HEADER]
    kept_headers[VERSION_HEADER] = headers[VERSION_HEADER]
    kept_headers[POSITION_HEADER] = headers[POSITION_HEADER]
    kept_headers[TOO_LARGE_HEADER] = f"{size} {max_payload}"
    return kept_headers, b""


class _Ack(msgspec.Struct):
    seq: int = 0
    error: dict[str, object] | None = None


async def publish_in_order(client: Client, inbox: Inbox, messages: list[Message], *, last: int) -> int:
    """Publish ``messages`` to a stream whose last sequence is ``last``; returns its new last
    sequence. Raises ``BackendUnavailable`` naming the first message that was not stored."""
    loop = asyncio.get_running_loop()
    replies: list[asyncio.Future[Msg]] = []
    forgets = []
    try:
        for offset, (subject, body, headers) in enumerate(messages):
            reply: asyncio.Future[Msg] = loop.create_future()
            subject_to, forget = inbox.reply_to(_resolver(reply))
            replies.append(reply)
            forgets.append(forget)
            headers[_SEQUENCE_HEADER] = str(last + offset)
            await client.publish(subject, body, reply=subject_to, headers=headers)
        done, _ = await asyncio.wait(replies, timeout=ACK_TIMEOUT)
    finally:
        for forget in forgets:
            forget()
    for offset, reply in enumerate(replies):
        what = f"message {offset + 1} of {len(messages)} on {messages[offset][0]!r}"
        if reply not in done:
            raise BackendUnavailable(f"JetStream did not acknowledge {what} within {ACK_TIMEOUT:.0f} s")
        answer = reply.result()
        status = (answer.headers or {}).get("Status")
        if status is not None:
            raise BackendUnavailable(f"JetStream did not store {what}: status {status} (no stream?)")
        ack = msgspec.json.decode(answer.data or b"{}", type=_Ack)
        if ack.error is not None:
            raise BackendUnavailable(
                f"JetStream did not store {what}: {ack.error.get('description', ack.error)}"
            )
    return last + len(messages)


def _resolver(reply: asyncio.Future[Msg]) -> Callable[[Msg], None]:
    def resolve(message: Msg) -> None:
        if not reply.done():
            reply.set_result(message)

    return resolve


#: Whether the store holds the event with this id (``Nats-Msg-Id``) at this position.
Verifier = Callable[[int, str], Awaitable[bool]]


@dataclass(frozen=True)
class Seen:
    """What resyncs learned of a partition's stream, so that the next one looks only at what came
    after: the stream (its creation time), the sequence looked through, and the last message of
    tidings' own up to there (its sequence and store position; 0: none)."""

    created: datetime
    through: int
    own: int
    position: int


#: Rounds of a resync that look again at what came while it looked: junk that keeps coming must
#: not keep it from answering (the relay's publish then fails, and it backs off).
_ROUNDS: Final = 10


async def resync(client: Client, stream: str, verify: Verifier, seen: Seen | None = None) -> tuple[int, Seen]:
    """The stream's last sequence, and what it holds of tidings' own (``Seen.position``: the store
    position of the last message there whose claim ``verify`` confirms; others passed over).
    With ``seen`` (of the same stream), only the messages after it are looked at."""
    js = client.jetstream()
    passed_over, last = 0, 0
    for _ in range(_ROUNDS):
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            raise BackendUnavailable(f"JetStream stream {stream!r} is gone") from None
        last, first = info.state.last_seq, max(info.state.first_seq, 1)
        # nats-py before 2.10 does not hand the stream's creation time over (nor do old servers).
        created: datetime | None = getattr(info, "created", None)
        if seen is not None and (
            created != seen.created or last < seen.through or (seen.own and first > seen.own)
        ):
            seen = None  # another stream of the name, or its message of tidings' own is gone
        if seen is not None and last == seen.through:
            break
        own, position, junk = await _last_own(
            js, stream, verify, last, first - 1 if seen is None else seen.through
        )
        passed_over += junk
        if own == 0 and seen is not None:
            own, position = seen.own, seen.position
        # A server that does not say when it made the stream: nothing learned can be kept.
        seen = Seen(created or datetime.min, last if created else 0, own, position)
        if created is None:
            break
    if passed_over:
        log.warning(
            "relay: passed over %d messages on JetStream stream %r that tidings did not publish "
            "(with an access policy, only the relay's principal may publish on event subjects)",
            passed_over,
            stream,
        )
    return last, seen or Seen(datetime.min, 0, 0, 0)


async def _last_own(
    js: JetStreamContext, stream: str, verify: Verifier, last: int, since: int
) -> tuple[int, int, int]:
    """The sequence and store position of the last message of tidings' own after ``since`` up to
    ``last`` (0, 0: none), and how many others it passed over."""
    junk = 0
    # Each claim costs the store one read; a message without one costs only its get. No limit on
    # how far back: a limit that junk can exhaust would stall the relay for good.
    for sequence in range(last, since, -1):
        # The stream's leader answers this get (a direct get may come from a lagging replica,
        # whose "not found" would send the relay back to publish what is stored already).
        try:
            found = await js.get_msg(stream, sequence)
        except NotFoundError:
            continue  # deleted
        headers = found.headers or {}
        position, event_id = headers.get(POSITION_HEADER), headers.get("Nats-Msg-Id")
        if (
            isinstance(position, str)
            and _POSITION.fullmatch(position)
            and isinstance(event_id, str)
            and await verify(int(position), event_id)
        ):
            return sequence, int(position), junk
        junk += 1
    # No message of tidings' own (or none left): publishing from the log's start repeats what a
    # purge removed, which costs time; going on after a guess could skip events.
    return 0, 0, junk
