"""CloudEvents binary mode, as the NATS protocol binding defines it (§3.1).

Every attribute, extensions included, travels in a header ``ce-<name>`` whose value is
percent-encoded (``headers.py``); the data is the body. ``datacontenttype`` is a header like any
other (``ce-datacontenttype``): on NATS, ``Content-Type`` only tells the two content modes apart,
``application/cloudevents`` meaning structured mode (``from_message`` reads both).

Messages that tidings published before it followed the binding carry ``datacontenttype`` in
``Content-Type`` and their values as they are; ``from_binary`` reads them too (``legacy``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec

from tidings.domain.attributes import (
    JSON,
    MSGPACK,
    canonical_string,
    check_extension_name,
    check_extensions,
    data_content_type,
    is_structured_mode,
)
from tidings.domain.envelope import (
    DEFAULT_MAX_SIZE,
    SPEC_VERSION,
    Envelope,
    TopicOf,
    check_size,
    check_text,
    derived_topic,
    format_time,
    from_structured,
    json_syntax,
    received_time,
)
from tidings.domain.headers import HeaderError, needs_encoding, percent_decode, percent_encode
from tidings.domain.nesting import check_depth, check_msgpack_depth, too_deep
from tidings.domain.schema_problems import value_problem
from tidings.errors import MalformedEvent

# The attributes that travel as ``ce-*`` headers (the envelope's, but its data and extensions),
# in the order they are written.
_HEADER_ATTRIBUTES: Final = tuple(n for n in Envelope.__struct_fields__ if n not in ("data", "extensions"))
_KNOWN_HEADERS: Final = frozenset(_HEADER_ATTRIBUTES)
_CE: Final = "ce-"


def to_binary(envelope: Envelope) -> tuple[dict[str, str], bytes]:
    """Encode in CloudEvents binary mode as the NATS protocol binding defines it (§3.1): every
    attribute, extensions included, in a header ``ce-<name>`` with its value percent-encoded, and
    the data as the body. ``datacontenttype`` is ``ce-datacontenttype`` like any attribute:
    on NATS, ``Content-Type`` only tells structured mode apart."""
    headers: dict[str, str] = {}
    for name in _HEADER_ATTRIBUTES:
        value = getattr(envelope, name)
        if value is None:
            continue
        if isinstance(value, datetime):
            try:
                value = format_time(value)
            except OverflowError:
                raise MalformedEvent(f"envelope attribute {name!r} is out of range in UTC") from None
        headers[_CE + name] = value if type(value) is str else str(value)
    if envelope.extensions:
        check_extensions(envelope.extensions)
        for name, extension in envelope.extensions.items():
            headers[_CE + name] = canonical_string(extension)
    # One look at all values together: the relay writes this for every event, and nearly always
    # nothing needs encoding.
    if needs_encoding("".join(headers.values())):
        for key, text in headers.items():
            try:
                headers[key] = percent_encode(text)
            except HeaderError as exc:
                raise MalformedEvent(f"event {envelope.id!r}: attribute {key[3:]!r} is {exc}") from None
    return headers, envelope.data


def from_binary(
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    topic_of: TopicOf | None = None,
    received: datetime | None = None,
    legacy: bool = False,
) -> Envelope:
    """Decode CloudEvents binary mode; raise ``MalformedEvent`` naming what is wrong.

    Header names count in any case and values are percent-decoded (NATS protocol binding
    §3.1.3); every ``ce-*`` header that names no known attribute is an extension.
    ``datacontenttype`` comes from ``ce-datacontenttype``, else from ``Content-Type`` (where the
    HTTP binding puts it, and tidings did before it followed the NATS binding), else it is JSON.
    ``legacy`` reads the values as tidings wrote them then: as they are, not percent-encoded.
    ``topic_of`` and ``received`` as for ``from_structured``.
    """
    check_size(body, max_size, "payload")
    attributes: dict[str, object] = {}
    extensions: dict[str, str] = {}
    content_type: object = None
    for header, value in headers.items():
        if not header.isascii():  # else str.lower's Unicode rules make names of other letters
            raise MalformedEvent(f"header name {header[:80]!r} is not ASCII")
        key = header.lower()
        if not key.startswith(_CE):
            if key == "content-type":
                if content_type is not None:
                    raise MalformedEvent(_twice(header))
                content_type = value
            continue
        if type(value) is not str:
            raise MalformedEvent(f"header {header!r} is not text")
        if not legacy and ("%" in value or value[:1] == '"' or not value.isascii()):
            try:
                value = percent_decode(value)
            except HeaderError as exc:
                raise MalformedEvent(f"header {header!r}: {exc}") from None
        name = key[3:]
        if name in _KNOWN_HEADERS:
            if name in attributes:
                raise MalformedEvent(_twice(header))
            attributes[name] = value
        else:
            if name in extensions:
                raise MalformedEvent(_twice(header))
            check_extension_name(name)
            extensions[name] = value
    if attributes.get("specversion") != SPEC_VERSION:
        raise MalformedEvent(f"unsupported CloudEvents specversion {attributes.get('specversion')!r}")
    content_type = attributes.get("datacontenttype", content_type)
    if content_type is None:
        attributes["datacontenttype"] = JSON
    elif content_type != JSON:
        if not isinstance(content_type, str):
            raise MalformedEvent("header 'content-type' is not text")
        attributes["datacontenttype"] = data_content_type(content_type)
    version = attributes.get("schemaversion")
    if version is not None:
        if not (isinstance(version, str) and version.isascii() and version.isdigit() and len(version) < 8):
            raise MalformedEvent(f"header ce-schemaversion must be a whole number, got {version!r}")
        attributes["schemaversion"] = int(version)
    event_id, event_type = attributes.get("id"), attributes.get("type")
    if isinstance(event_id, str) and isinstance(event_type, str):  # else msgspec names what is missing
        if "topic" not in attributes:
            attributes["topic"] = derived_topic(event_id, event_type, topic_of)
        if "time" not in attributes:
            attributes["time"] = received_time(event_id, received)
    attributes["data"] = body
    if extensions:
        check_extensions(extensions)
        attributes["extensions"] = extensions
    try:
        envelope = msgspec.convert(attributes, Envelope)
    except msgspec.ValidationError as exc:
        problem = value_problem(exc, attributes, Envelope, whole="envelope", member="attribute")
        raise MalformedEvent(f"invalid envelope headers: {problem}") from None
    if envelope.datacontenttype == JSON and body:
        check_depth(body, f"event {envelope.id}: body")
        try:
            json_syntax.decode(body)
        except msgspec.DecodeError as exc:
            raise MalformedEvent(f"event {envelope.id}: body is not one JSON value: {exc}") from None
        except RecursionError:
            raise MalformedEvent(too_deep(f"event {envelope.id}: body")) from None
    elif envelope.datacontenttype == MSGPACK:
        check_msgpack_depth(body, f"event {envelope.id}: body")
    return check_text(envelope)


def _twice(header: str) -> str:
    return f"header {header!r} is given twice (header names are case-insensitive)"


def from_message(
    headers: Mapping[str, str],
    body: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    topic_of: TopicOf | None = None,
    received: datetime | None = None,
    legacy: bool = False,
) -> Envelope:
    """Decode a NATS message in the content mode it is in: structured when its ``Content-Type``
    is ``application/cloudevents`` (in any case), else binary (NATS protocol binding §3)."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    if not (isinstance(content_type, str) and is_structured_mode(content_type)):
        return from_binary(
            headers, body, max_size=max_size, topic_of=topic_of, received=received, legacy=legacy
        )
    essence = content_type.partition(";")[0].strip().lower()
    if essence not in ("application/cloudevents", "application/cloudevents+json"):
        # The binding's structured mode is the JSON event format; batches it does not define.
        raise MalformedEvent(f"content type {content_type[:80]!r}: only the JSON event format is read")
    return from_structured(body, max_size=max_size, topic_of=topic_of, received=received)
