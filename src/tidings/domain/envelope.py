"""The envelope: an event's encoded data plus its metadata, modelled on CloudEvents 1.0.

Context attributes follow the spec (``id``, ``source``, ``type``, ``subject``, ``time``,
``specversion``, ``datacontenttype``, ``dataschema``); tidings adds the extensions ``topic``,
``schemaversion``, ``correlationid``, ``causationid``, ``traceparent``, ``tracestate``
(W3C Trace Context), ``expirytime`` and ``partitionkey``. Two wire forms are supported: structured
JSON (one document, used in SQL rows) and binary mode (``ce-*`` headers plus the data as the body,
used on NATS).

Decoding is strict: only schema-checked JSON, a size limit, and every failure becomes a
``MalformedEvent`` that names the problem.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Annotated, Final, Generic, Literal, TypeVar

import msgspec

from tidings.domain.events import Event
from tidings.domain.topics import MAX_TOPIC_LENGTH, TOPIC_REGEX
from tidings.errors import MalformedEvent, PayloadTooLarge

E = TypeVar("E", bound=Event)

SPEC_VERSION: Final = "1.0"
JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
DEFAULT_MAX_SIZE: Final = 1024 * 1024  # 1 MiB, for an envelope or a payload

_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Version = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
# Checked by msgspec while decoding (in C): the topic grammar and time zones on every timestamp.
_Topic = Annotated[str, msgspec.Meta(pattern=TOPIC_REGEX, max_length=MAX_TOPIC_LENGTH)]
_Time = Annotated[datetime, msgspec.Meta(tz=True)]
_TOPIC_PATTERN = re.compile(TOPIC_REGEX)


# Not kw_only and not tracked by the garbage collector: the hot paths build envelopes with
# positional arguments (several times cheaper than keywords in msgspec), and an envelope holds
# only atomic values, so it can never be part of a reference cycle. Build them with keywords in
# application code: new attributes may be added at the end.
class Envelope(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One event as it travels and as it is stored. ``data`` holds the encoded payload."""

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
class _Structured(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    specversion: Literal["1.0"]
    id: _Id
    source: _Text
    type: _Text
    topic: _Topic
    time: _Time
    subject: _Text | None = None
    datacontenttype: _Text = JSON
    dataschema: _Text | None = None
    schemaversion: _Version = 1
    correlationid: _Id | None = None
    causationid: _Id | None = None
    traceparent: _Text | None = None
    tracestate: _Text | None = None
    expirytime: _Time | None = None
    partitionkey: _Text | None = None
    data: msgspec.Raw = _ABSENT  # msgspec cannot make Raw optional; this marks "no data"
    data_base64: str | None = None


_structured_encoder = msgspec.json.Encoder()
_structured_decoder = msgspec.json.Decoder(_Structured)


_json_syntax = msgspec.json.Decoder(msgspec.Raw)  # checks JSON syntax without building objects


def to_structured(envelope: Envelope) -> bytes:
    """Encode as a CloudEvents structured-mode JSON document.

    JSON data is embedded as it is, so it is checked to be exactly one JSON value first: a body
    such as ``1,"type":"Other"`` would otherwise smuggle attributes into the document.
    Times are written in UTC: the instant survives exactly, where an offset of seconds would not.
    """
    inline = envelope.datacontenttype == JSON
    if inline and envelope.data:
        try:
            _json_syntax.decode(envelope.data)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"event {envelope.id}: data is not one JSON value: {exc}") from None
    try:
        return _structured_encoder.encode(_structured(envelope, inline))
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


def from_structured(document: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Decode a structured-mode JSON document; raise ``MalformedEvent`` naming what is wrong."""
    check_size(document, max_size, "envelope")
    try:
        raw = _structured_decoder.decode(document)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"invalid envelope: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"envelope is {utf8_problem(document) or f'not valid JSON: {exc}'}") from None
    except RecursionError:
        raise MalformedEvent("envelope is nested too deeply") from None
    if raw.data and raw.data_base64 is not None:
        raise MalformedEvent("envelope has both 'data' and 'data_base64'")
    if raw.data_base64 is not None:
        try:
            data = base64.b64decode(raw.data_base64, validate=True)
        except ValueError:
            raise MalformedEvent("envelope attribute 'data_base64' is not valid base64") from None
        if raw.datacontenttype == JSON and data:
            try:
                _json_syntax.decode(data)
            except msgspec.DecodeError as exc:
                raise MalformedEvent(f"event {raw.id}: data_base64 is not one JSON value: {exc}") from None
    else:
        data = bytes(raw.data)
    check_size(data, max_size, "payload")
    return Envelope(
        id=raw.id,
        source=raw.source,
        type=raw.type,
        topic=raw.topic,
        time=raw.time,
        data=data,
        subject=raw.subject,
        specversion=raw.specversion,
        datacontenttype=raw.datacontenttype,
        dataschema=raw.dataschema,
        schemaversion=raw.schemaversion,
        correlationid=raw.correlationid,
        causationid=raw.causationid,
        traceparent=raw.traceparent,
        tracestate=raw.tracestate,
        expirytime=raw.expirytime,
        partitionkey=raw.partitionkey,
    )


_HEADER_ATTRIBUTES: Final = (
    "id",
    "source",
    "type",
    "topic",
    "time",
    "subject",
    "specversion",
    "dataschema",
    "schemaversion",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
    "expirytime",
    "partitionkey",
)


def to_binary(envelope: Envelope) -> tuple[dict[str, str], bytes]:
    """Encode in CloudEvents binary mode: ``ce-*`` headers and the data as the body."""
    headers = {"content-type": envelope.datacontenttype}
    for name in _HEADER_ATTRIBUTES:
        value = getattr(envelope, name)
        if value is None:
            continue
        if isinstance(value, datetime):
            try:
                value = format_time(value)
            except OverflowError:
                raise MalformedEvent(f"envelope attribute {name!r} is out of range in UTC") from None
        headers[f"ce-{name}"] = str(value)
    return headers, envelope.data


def from_binary(headers: dict[str, str], body: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Envelope:
    """Decode CloudEvents binary mode; raise ``MalformedEvent`` naming what is wrong."""
    check_size(body, max_size, "payload")
    attributes: dict[str, object] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered.startswith("ce-") and lowered[3:] in _HEADER_ATTRIBUTES:
            attributes[lowered[3:]] = value
    attributes["datacontenttype"] = headers.get("content-type", headers.get("Content-Type", JSON))
    attributes["data"] = body
    if attributes.get("specversion") != SPEC_VERSION:
        raise MalformedEvent(f"unsupported CloudEvents specversion {attributes.get('specversion')!r}")
    version = attributes.get("schemaversion")
    if version is not None:
        if not (isinstance(version, str) and version.isascii() and version.isdigit() and len(version) < 8):
            raise MalformedEvent(f"header ce-schemaversion must be a whole number, got {version!r}")
        attributes["schemaversion"] = int(version)
    try:
        envelope = msgspec.convert(attributes, Envelope)
    except msgspec.ValidationError as exc:
        raise MalformedEvent(f"invalid envelope headers: {exc}") from None
    if envelope.datacontenttype == JSON and body:
        try:
            _json_syntax.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"event {envelope.id}: body is not one JSON value: {exc}") from None
    return envelope


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds, the form every attribute of type Timestamp uses."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def utf8_problem(blob: bytes) -> str | None:
    """Where ``blob`` stops being UTF-8, in tidings' words (None: it is UTF-8). Asked only after a
    decoder failed, so that the error names this cause whatever the decoder's own words for it."""
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 at byte {exc.start}"
    return None


def check_size(blob: bytes, max_size: int, what: str) -> None:
    if len(blob) > max_size:
        raise PayloadTooLarge(f"{what} of {len(blob):,} bytes exceeds the limit of {max_size:,} bytes")


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
    zones, JSON data that is exactly one JSON value, the size limit.
    """
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
        try:
            _json_syntax.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"event {envelope.id}: data is not one JSON value: {exc}") from None
    return envelope


_valid_topics: set[str] = set()
