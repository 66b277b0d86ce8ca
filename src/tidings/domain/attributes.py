"""CloudEvents attribute rules that both wire forms share: extension names and values, and the
media types of ``datacontenttype``.

Extensions are the attributes that neither CloudEvents nor tidings defines (``comexampletenant``,
``knativearrivaltime``): an envelope keeps them, and writes them out again. They are untrusted
input, so decoding holds them to the spec and to bounds:

- a name is lower-case ASCII letters and digits (CloudEvents 1.0, "Attribute Naming Convention":
  a MUST). The spec's 20 characters are a SHOULD for producers, so a longer name is accepted,
  up to ``MAX_EXTENSION_NAME``;
- a value is a String, an Integer (32 bits) or a Boolean, the types the JSON format can tell
  apart (URIs and timestamps travel as strings); a string holds no control characters (the
  spec's MUST NOT) and at most ``MAX_EXTENSION_VALUE`` characters;
- an event carries at most ``MAX_EXTENSIONS`` of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from tidings.errors import MalformedEvent

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"

MAX_EXTENSIONS: Final = 32
MAX_EXTENSION_NAME: Final = 64
MAX_EXTENSION_VALUE: Final = 4096

#: What an extension may hold: a String, an Integer (32-bit, as CloudEvents defines it) or a
#: Boolean. In binary mode every value is a string; in structured mode JSON keeps the type.
ExtensionValue = (
    Annotated[str, msgspec.Meta(max_length=MAX_EXTENSION_VALUE)]
    | Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
    | bool
)

#: Names that are no extension: the attributes of CloudEvents and of tidings, and the members
#: that the JSON format reserves for the data.
RESERVED_NAMES: Final = frozenset(
    {
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "topic",
        "schemaversion",
        "correlationid",
        "causationid",
        "traceparent",
        "tracestate",
        "expirytime",
        "partitionkey",
        "data",
        "data_base64",
    }
)

_NAME = re.compile(r"[a-z0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character, which no CloudEvents string may hold."""
    return _CONTROL.search(text) is not None


#: Control characters as ``\x0a``; and the line and paragraph separators, which split lines in
#: some viewers and in ``str.splitlines`` though they are no control characters.
_ESCAPES: Final = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_LINES: Final = {key: value for key, value in _ESCAPES.items() if key != ord("\n")}


def escape_controls(text: str, *, lines: bool = False) -> str:
    """``text`` with its control characters escaped (``lines``: line breaks kept), for what
    is stored or logged of untrusted input: a NUL cannot enter a PostgreSQL text column, and a
    line break from the bus would start what passes for a log record of its own."""
    return text.translate(_LINES if lines else _ESCAPES)


def check_extension_name(name: str) -> None:
    """Raise ``MalformedEvent`` unless ``name`` may name an extension."""
    if name in RESERVED_NAMES:
        raise MalformedEvent(f"{name!r} is an attribute of its own, not an extension")
    if len(name) > MAX_EXTENSION_NAME or not _NAME.fullmatch(name):
        raise MalformedEvent(
            f"attribute name {name[:80]!r} is not valid: CloudEvents names are lower-case ASCII "
            f"letters and digits (tidings accepts up to {MAX_EXTENSION_NAME})"
        )


def check_extension_value(name: str, value: object) -> None:
    """Raise ``MalformedEvent`` unless ``value`` may be the value of extension ``name``."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**31) <= value <= 2**31 - 1:
            raise MalformedEvent(f"extension {name!r}: an Integer has 32 bits, got {value}")
        return
    if not isinstance(value, str):
        raise MalformedEvent(
            f"extension {name!r} must be a string, an integer or a boolean, got {type(value).__name__}"
        )
    if len(value) > MAX_EXTENSION_VALUE:
        raise MalformedEvent(f"extension {name!r} is longer than {MAX_EXTENSION_VALUE} characters")
    if _CONTROL.search(value):
        raise MalformedEvent(f"extension {name!r} holds a control character")


def check_extensions(extensions: Mapping[str, object]) -> None:
    """Raise ``MalformedEvent`` unless every extension follows the rules above."""
    if len(extensions) > MAX_EXTENSIONS:
        raise MalformedEvent(f"an event may carry {MAX_EXTENSIONS} extensions, got {len(extensions)}")
    for name, value in extensions.items():
        check_extension_name(name)
        check_extension_value(name, value)


def canonical_string(value: str | int | bool) -> str:
    """An extension value as a header carries it (the spec's canonical string form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def data_content_type(value: str) -> str:
    """``datacontenttype`` as tidings keeps it: ``application/json`` with parameters (other
    producers send ``application/json; charset=utf-8``) is ``application/json``; JSON is UTF-8
    (RFC 8259 §8.1), so a charset other than UTF-8 is refused. Other types are kept as given."""
    essence, _, parameters = value.partition(";")
    if essence.strip().lower() != JSON:
        return value
    for parameter in parameters.split(";"):
        name, _, given = parameter.partition("=")
        if name.strip().lower() == "charset" and given.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise MalformedEvent(f"datacontenttype {value[:80]!r}: JSON data must be UTF-8")
    return JSON


def is_json_type(content_type: str) -> bool:
    """Whether a media type declares JSON data: ``*/json`` or ``*/*+json``, parameters aside
    (the JSON event format, §3.1)."""
    essence = content_type.partition(";")[0].strip().lower()
    return essence.endswith(("/json", "+json"))


def is_structured_mode(content_type: str) -> bool:
    """Whether a NATS message's ``Content-Type`` says structured mode: ``application/cloudevents``,
    matched case-insensitively (NATS protocol binding §3); anything else is binary mode."""
    return content_type.strip().lower().startswith("application/cloudevents")
