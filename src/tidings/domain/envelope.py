"""The envelope: an event's encoded data plus its metadata, modelled on CloudEvents 1.0.

Context attributes follow the spec (``id``, ``source``, ``type``, ``subject``, ``time``,
``specversion``, ``datacontenttype``, ``dataschema``); tidings adds the extensions ``topic``,
``schemaversion``, ``correlationid``, ``causationid``, ``traceparent``, ``tracestate``
(W3C Trace Context), ``expirytime`` and ``partitionkey``. Any other extension an event arrives
with is kept in ``extensions`` and written out again. Two wire forms are supported: structured
JSON (one document, here; used for timers and dead letters in SQL) and binary mode as the NATS
protocol binding defines it (percent-encoded ``ce-*`` headers plus the data as the body, used on
NATS: ``binary.py``).

Events from other producers decode too: one without ``topic`` gets the topic of its registered
type (``topic_of``), one without ``time`` (optional in CloudEvents) gets the time it was
received (``received``: on NATS, when JetStream stored it).

Decoding is strict: only schema-checked JSON, a size limit, extensions held to the spec's names
and to bounds (``attributes.py``), and every failure becomes a ``MalformedEvent`` that names the
problem.
"""

from __future__ import annotations

import base64
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Annotated, Final, Generic, Literal, TypeVar

import msgspec

from tidings.domain.attributes import JSON as JSON
from tidings.domain.attributes import (
    MAX_EXTENSION_VALUE,
    MAX_EXTENSIONS,
    ExtensionValue,
    check_extension_name,
    check_extensions,
    data_content_type,
    has_control,
    is_json_type,
)
from tidings.domain.attributes import MSGPACK as MSGPACK
from tidings.domain.events import Event
from tidings.domain.nesting import MAX_DEPTH, check_depth, check_msgpack_depth, deeper_than, too_deep
from tidings.domain.schema_problems import json_problem
from tidings.domain.topics import MAX_TOPIC_LENGTH, TOPIC_REGEX
from tidings.errors import MalformedEvent, PayloadTooLarge

E = TypeVar("E", bound=Event)

SPEC_VERSION: Final = "1.0"
DEFAULT_MAX_SIZE: Final = 1024 * 1024  # 1 MiB, for an envelope or a payload

#: The topic of a registered event type, ``None`` for a type this process does not know.
TopicOf = Callable[[str], str | None]

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Version = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
# Checked by msgspec while decoding (in C): the topic grammar and time zones on every timestamp.
_Topic = Annotated[str, msgspec.Meta(pattern=TOPIC_REGEX, max_length=MAX_TOPIC_LENGTH)]
_Time = Annotated[datetime, msgspec.Meta(tz=True)]
_TOPIC_PATTERN = re.compile(TOPIC_REGEX)


# Not kw_only and not tracked by the garbage collector: the hot paths build envelopes with
# positional arguments (several times cheaper than keywords in msgspec), and an envelope holds
# only atomic values and a dict of them, so it can never be part of a reference cycle. Build them
# with keywords in application code: new attributes may be added at the end.
class Envelope(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One event as it travels and as it is stored. ``data`` holds the encoded payload;
    ``extensions`` the attributes of other producers that tidings does not define (read them,
    never change them in place: envelopes are shared)."""

    id: _Id
    source: _Text
    type: _Text
    topic: _Topic
    time: _Time
    data: bytes
    subject: _Text | None = None
    specversion: Literal["1.0"] = SPEC_VERSION
    datacontenttype: _Text = JSON
    dataschema: _Text | None = None
    schemaversion: _Version = 1
    correlationid: _Id | None = None
    causationid: _Id | None = None
    traceparent: _Text | None = None
    tracestate: _Text | None = None
    expirytime: _Time | None = None
    partitionkey: _Text | None = None
    extensions: Annotated[dict[str, ExtensionValue], msgspec.Meta(max_length=MAX_EXTENSIONS)] = {}


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An envelope as the store holds it: in a stream at ``version``, in the log at ``position``."""

    envelope: Envelope
    stream: str
    version: int
    position: int


class Undecodable(RecordedEvent, frozen=True, gc=False):
    """A message read from a broker that is no valid envelope (anyone may publish to a subject):
    ``envelope`` holds what could be read of it, ``error`` says what is wrong; consumers
    dead-letter it as ``malformed`` with its raw body."""

    error: str = ""


_ABSENT: Final = msgspec.Raw(b"")


# The structured form: all attributes at the top level, data inline when it is JSON, else base64.
# ``topic`` and ``time`` may be absent in events of other producers (see ``from_structured``);
# every member not named here is an extension (``extensions``, checked apart).
class _Structured(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    specversion: Literal["1.0"]
    id: _Id
    source: _Text
    type: _Text
    topic: _Topic | None = None
    time: _Time | None = None
    subject: _Text | None = None
    datacontenttype: _Text | None = JSON  # null is absent (JSON format §2.2): JSON then
    dataschema: _Text | None = None
    schemaversion: _Version | None = 1
    correlationid: _Id | None = None
    causationid: _Id | None = None
    traceparent: _Text | None = None
    tracestate: _Text | None = None
    expirytime: _Time | None = None
    partitionkey: _Text | None = None
    data: msgspec.Raw = _ABSENT  # msgspec cannot make Raw optional; this marks "no data"
    data_base64: str | None = None


_STRUCTURED_MEMBERS: Final = frozenset(_Structured.__struct_fields__)
_structured_encoder = msgspec.json.Encoder()
_structured_decoder = msgspec.json.Decoder(_Structured)
_members_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])  # finds the extensions' names
_extension_decoder = msgspec.json.Decoder(ExtensionValue | None)
json_syntax = msgspec.json.Decoder(msgspec.Raw)  # checks JSON syntax without building objects
_json_string = msgspec.json.Decoder(str)


def to_structured(envelope: Envelope) -> bytes:
    """Encode as a CloudEvents structured-mode JSON document.

    JSON data is embedded as it is, so it is checked to be exactly one JSON value first: a body
    such as ``1,"type":"Other"`` would otherwise smuggle attributes into the document.
    Times are written in UTC: the instant survives exactly, where an offset of seconds would not.
    Extensions are top-level members, as the JSON format places every attribute.
    """
    inline = envelope.datacontenttype == JSON
    if inline and envelope.data:
        check_depth(envelope.data, f"event {envelope.id}: data")
        try:
            json_syntax.decode(envelope.data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise MalformedEvent(f"event {envelope.id}: data is {_json_problem(exc)}") from None
    try:
        document = _structured_encoder.encode(_structured(envelope, inline))
        if not envelope.extensions:
            return document
        check_extensions(envelope.extensions)  # names that could not take a known member's place
        return document[:-1] + b"," + _structured_encoder.encode(envelope.extensions)[1:]
    except (UnicodeEncodeError, OverflowError, ValueError) as exc:
        raise MalformedEvent(f"event {envelope.id!r} cannot be encoded: {exc}") from None


def _structured(envelope: Envelope, inline: bool) -> _Structured:
    return _Structured(
        specversion=envelope.specversion,
        id=envelope.id,
        source=envelope.source,
        type=envelope.type,
        topic=envelope.topic,
        time=envelope.time.astimezone(UTC),
        subject=envelope.subject,
        datacontenttype=envelope.datacontenttype,
        dataschema=envelope.dataschema,
        schemaversion=envelope.schemaversion,
        correlationid=envelope.correlationid,
        causationid=envelope.causationid,
        traceparent=envelope.traceparent,
        tracestate=envelope.tracestate,
        expirytime=envelope.expirytime.astimezone(UTC) if envelope.expirytime else None,
        partitionkey=envelope.partitionkey,
        data=msgspec.Raw(envelope.data) if inline and envelope.data else _ABSENT,
        data_base64=None if inline else base64.b64encode(envelope.data).decode("ascii"),
    )


def from_structured(
    document: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    topic_of: TopicOf | None = None,
    received: datetime | None = None,
) -> Envelope:
    """Decode a structured-mode JSON document; raise ``MalformedEvent`` naming what is wrong.

    ``topic_of`` gives the topic of an event that carries none, ``received`` the time of one
    that carries none (both may come from other producers); without them, both are required.
    """
    check_size(document, max_size, "envelope")
    try:
        raw = _structured_decoder.decode(document)
        # The data sits one level inside the document: a document within the limit plus one is
        # read on, its data then held to the limit itself.
        check_depth(document, "envelope", MAX_DEPTH + 1)
        members = _members_decoder.decode(document)
    except msgspec.ValidationError as exc:
        problem = json_problem(exc, document, _Structured, whole="envelope", member="attribute")
        raise MalformedEvent(f"invalid envelope: {problem}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"envelope is {utf8_problem(document) or f'not valid JSON: {exc}'}") from None
    except RecursionError:
        raise MalformedEvent(too_deep("envelope", MAX_DEPTH + 1)) from None
    if raw.data and raw.data_base64 is not None:
        raise MalformedEvent("envelope has both 'data' and 'data_base64'")
    content_type = data_content_type(raw.datacontenttype or JSON)
    if raw.data_base64 is not None:
        try:
            data = base64.b64decode(raw.data_base64, validate=True)
        except ValueError:
            raise MalformedEvent("envelope attribute 'data_base64' is not valid base64") from None
        if content_type == JSON and data:
            check_depth(data, f"event {raw.id}: data_base64")
            try:
                json_syntax.decode(data)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise MalformedEvent(f"event {raw.id}: data_base64 is {_json_problem(exc)}") from None
    elif raw.data and not is_json_type(content_type):
        # The JSON format carries data of other types as a string in that type's encoding.
        try:
            data = _json_string.decode(raw.data).encode("utf-8")
        except (msgspec.ValidationError, UnicodeEncodeError):
            raise MalformedEvent(
                f"event {raw.id}: data of type {content_type[:80]!r} must be a JSON string"
            ) from None
    else:
        data = bytes(raw.data)
        if content_type == JSON:
            check_depth(data, f"event {raw.id}: data")
    if content_type == MSGPACK:  # in data_base64, or a string of the JSON format
        check_msgpack_depth(data, f"event {raw.id}: data")
    check_size(data, max_size, "payload")
    extensions = _extensions_of(members) if len(members) > len(_STRUCTURED_MEMBERS & members.keys()) else {}
    envelope = Envelope(
        id=raw.id,
        source=raw.source,
        type=raw.type,
        topic=raw.topic or derived_topic(raw.id, raw.type, topic_of),
        time=raw.time or received_time(raw.id, received),
        data=data,
        subject=raw.subject,
        specversion=raw.specversion,
        datacontenttype=content_type,
        dataschema=raw.dataschema,
        schemaversion=raw.schemaversion or 1,
        correlationid=raw.correlationid,
        causationid=raw.causationid,
        traceparent=raw.traceparent,
        tracestate=raw.tracestate,
        expirytime=raw.expirytime,
        partitionkey=raw.partitionkey,
        extensions=extensions,
    )
    return check_text(envelope)


def _extensions_of(members: dict[str, msgspec.Raw]) -> dict[str, ExtensionValue]:
    """The members of a structured document that are no known attribute; ``null`` is absent
    (JSON format §2.2)."""
    extensions: dict[str, ExtensionValue] = {}
    for name, raw in members.items():
        if name in _STRUCTURED_MEMBERS:
            continue
        check_extension_name(name)
        try:
            value = _extension_decoder.decode(raw)
        except msgspec.ValidationError:
            raise MalformedEvent(
                f"extension {name!r} must be a string, a 32-bit integer or a boolean "
                f"of at most {MAX_EXTENSION_VALUE} characters"
            ) from None
        except msgspec.DecodeError:  # (after ValidationError, its subclass) invalid UTF-8 in the value
            raise MalformedEvent(
                f"extension {name!r}: {utf8_problem(bytes(raw)) or 'not valid JSON'}"
            ) from None
        if value is not None:
            extensions[name] = value
    check_extensions(extensions)
    return extensions


#: The attributes that hold text; CloudEvents strings exclude control characters (spec, "Type
#: System"), and tidings relies on that: a NUL cannot enter a PostgreSQL text column (an id goes
#: into the inbox), and a line break in an id would forge lines in a text log.
_TEXT_ATTRIBUTES: Final = (
    "id", "source", "type", "subject", "datacontenttype", "dataschema", "correlationid",
    "causationid", "traceparent", "tracestate", "partitionkey",
)  # fmt: skip


_text_of: Final = operator.attrgetter(*_TEXT_ATTRIBUTES)


_ASCII_CONTROLS: Final = bytes((*range(0x20), 0x7F))


def check_text(envelope: Envelope) -> Envelope:
    """``envelope``, if none of its text attributes holds a control character."""
    values = _text_of(envelope)
    if _holds_control(_joined_text(values)):
        for name, value in zip(_TEXT_ATTRIBUTES, values, strict=True):
            if type(value) is str and has_control(value):
                raise MalformedEvent(f"envelope attribute {name!r} holds a control character")
    return envelope


def check_texts(envelopes: Sequence[Envelope]) -> None:
    """``check_text`` for the envelopes of one append: their text attributes are joined and
    looked at in one pass in C (per event, the calls cost more than the look); only a batch
    that holds a control character is looked at event by event, to name the attribute."""
    for start in range(0, len(envelopes), _TEXT_BATCH):
        batch = envelopes[start : start + _TEXT_BATCH]
        if _holds_control(_joined_text(chain.from_iterable(map(_text_of, batch)))):
            for envelope in batch:
                check_text(envelope)


#: Envelopes whose text is joined at once: the joined text stays small (some 20 KB for typical
#: events, at most 11 MB for attributes of the longest text) however long the append.
_TEXT_BATCH: Final = 256


def _joined_text(values: Iterable[str | None]) -> str:
    try:
        return "".join(filter(None, values))  # in C: str or None, as decoding made them
    except TypeError:  # an envelope built in code with a value of another type
        raise MalformedEvent("envelope text attributes must be strings") from None


def _holds_control(text: str) -> bool:
    """Whether ``text`` holds a control character (``has_control``), in as few passes as it takes."""
    if text.isascii():  # nearly always, and known without a pass: the controls are 0-31 and 127
        ascii_text = text.encode("ascii")  # a copy, then one table lookup a byte (isprintable
        # looks every character up in the Unicode database, some 4 times slower)
        return len(ascii_text.translate(None, _ASCII_CONTROLS)) != len(ascii_text)
    # isprintable is one pass in C and nearly always true; the pattern decides the rest (a
    # no-break space is not "printable", and is allowed).
    return not text.isprintable() and has_control(text)


def derived_topic(event_id: str, event_type: str, topic_of: TopicOf | None) -> str:
    """The topic of an event that carries none: its registered type's, else it is malformed."""
    topic = topic_of(event_type) if topic_of is not None else None
    if topic is None:
        raise MalformedEvent(
            f"event {event_id[:80]}: no topic, and its type {event_type[:80]!r} is not registered here"
        )
    return topic


def received_time(event_id: str, received: datetime | None) -> datetime:
    """The time of an event that carries none (``time`` is optional in CloudEvents): the time
    it was received, which the reader gives (on NATS: when JetStream stored the message)."""
    if received is None:
        raise MalformedEvent(f"event {event_id[:80]}: no time")
    return received


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, the form every attribute of type Timestamp uses."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _json_problem(exc: Exception) -> str:
    """What is wrong with data that should be one JSON value, in tidings' words first."""
    if isinstance(exc, RecursionError):  # the stack ran out before the limit was reached
        return deeper_than()
    return f"not one JSON value: {exc}"


def utf8_problem(blob: bytes) -> str | None:
    """Where ``blob`` stops being UTF-8, in tidings' words (None: it is UTF-8). Asked only after a
    decoder failed, so that the error names this cause whatever the decoder's own words for it."""
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}"
    return None


def check_size(blob: bytes | int, max_size: int, what: str) -> None:
    """Refuse ``blob`` (or a blob of that many bytes) if it is over ``max_size``."""
    size = blob if isinstance(blob, int) else len(blob)
    if size > max_size:
        raise PayloadTooLarge(f"{what} of {size:,} bytes exceeds the limit of {max_size:,} bytes")


class Stored(msgspec.Struct, Generic[E], frozen=True, kw_only=True):
    """A decoded event with where it is stored: what applications read."""

    event: E
    envelope: Envelope
    stream: str
    version: int
    position: int


def validate_envelope(envelope: Envelope, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Check an envelope built in code (its constructor checks nothing) before it is stored.

    The cheap checks that decoding does in C: non-empty ids and names, a valid topic, time
    zones, JSON data that is exactly one JSON value, the size limit; text without control
    characters; and the extensions' rules.
    """
    _check_built(envelope, max_size)
    check_text(envelope)
    if envelope.extensions:
        _check_built_extensions(envelope)
    return envelope


def validate_envelopes(envelopes: Sequence[Envelope], max_size: int = DEFAULT_MAX_SIZE) -> None:
    """``validate_envelope`` for the envelopes of one append, every check kept: the text of
    the whole batch is checked at once (``check_texts``), after the other checks of each event."""
    for envelope in envelopes:
        _check_built(envelope, max_size)
    check_texts(envelopes)
    for envelope in envelopes:
        if envelope.extensions:
            _check_built_extensions(envelope)


#: JSON data of this many bytes or fewer cannot nest deeper than ``MAX_DEPTH``: each level
#: takes an opening and a closing bracket. Below it, the depth is not measured (a call saved on
#: nearly every event; ``nested_deeper`` returns at once on such data).
SHALLOW_JSON: Final = 2 * MAX_DEPTH


def _check_built(envelope: Envelope, max_size: int) -> None:
    """``validate_envelope``'s checks but the text's and the extensions'."""
    for value, name in ((envelope.id, "id"), (envelope.source, "source"), (envelope.type, "type")):
        if not isinstance(value, str) or not 0 < len(value) <= 4096:
            raise MalformedEvent(f"envelope attribute {name!r} must be a non-empty string, got {value!r:.60}")
    topic = envelope.topic
    if topic not in _valid_topics:
        if not isinstance(topic, str) or len(topic) > MAX_TOPIC_LENGTH or not _TOPIC_PATTERN.match(topic):
            raise MalformedEvent(f"event {envelope.id}: invalid topic {topic!r:.80}")
        if len(_valid_topics) < 10_000:  # topics are few; the bound only guards against abuse
            _valid_topics.add(topic)
    if envelope.time.tzinfo is None or (
        envelope.expirytime is not None and envelope.expirytime.tzinfo is None
    ):
        raise MalformedEvent(f"event {envelope.id}: times must carry a time zone")
    data = envelope.data
    if len(data) > max_size:
        check_size(data, max_size, f"payload of event {envelope.id}")
    if data and envelope.datacontenttype == JSON:
        if len(data) > SHALLOW_JSON:
            check_depth(data, f"event {envelope.id}: data")
        try:
            json_syntax.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise MalformedEvent(f"event {envelope.id}: data is {_json_problem(exc)}") from None
    elif envelope.datacontenttype == MSGPACK:
        check_msgpack_depth(data, f"event {envelope.id}: data")


def _check_built_extensions(envelope: Envelope) -> None:
    if not isinstance(envelope.extensions, dict):
        raise MalformedEvent(f"event {envelope.id}: extensions must be a dict")
    check_extensions(envelope.extensions)


_valid_topics: set[str] = set()
