"""What a decoder found wrong with a document, named in tidings' words.

msgspec's messages are detail, and their wording changes between its versions. tidings names the
problem itself from the document and the class it was decoded as: a document that is no object,
a required member that is missing, the member whose value does not fit. msgspec's path to the bad
value (`` - at `$.id` ``) is read only to name that member, and only when it names one of the
class's members; when it cannot be read, the problem is named without it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

import msgspec

# The member a path starts at: `$.name`, `$.name[0]`, `$.name.inner`.
_PATH_MEMBER: Final = re.compile(r" - at `\$\.([^`.\[\]]+)")
# msgspec quotes the value of an invalid enum or literal: keep the reason and the path, never the
# value (error texts reach logs and dead letters).
_VALUE_QUOTED: Final = re.compile(r"^(Invalid [a-z ]*value)\b.*?(?= - at `|$)")
# The kind of a JSON document by its first character (it was read that far without a syntax error).
_JSON_KINDS: Final = {
    ord("{"): "object",
    ord("["): "array",
    ord('"'): "string",
    ord("t"): "boolean",
    ord("f"): "boolean",
    ord("n"): "null",
}
_members_of_json: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_READ_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


def json_problem(
    error: msgspec.ValidationError,
    document: bytes | str,
    schema: type[msgspec.Struct],
    *,
    whole: str,
    member: str,
) -> str:
    """What is wrong with the JSON ``document`` as a ``schema``, which ``error`` refused.

    ``whole`` names the document (``data``, ``envelope``), ``member`` one of its members
    (``field``, ``attribute``)."""
    if isinstance(document, str):  # msgspec reads text as well as bytes
        document = document.encode("utf-8", "surrogatepass")
    start = document.lstrip(b" \t\r\n")[:1]
    kind = _JSON_KINDS.get(start[0], "number") if start else "nothing"
    members: Collection[str] | None = None
    if kind == "object":
        try:
            members = _members_of_json.decode(document).keys()
        except _READ_ERRORS:
            members = None  # too deep or damaged further on: named without the missing members
    return _problem(error, kind, members, schema, whole, member)


def value_problem(
    error: msgspec.ValidationError, value: object, schema: type[msgspec.Struct], *, whole: str, member: str
) -> str:
    """What is wrong with the decoded ``value`` as a ``schema``, which ``error`` refused."""
    members = value.keys() if isinstance(value, dict) else None
    return _problem(error, kind_of(value), members, schema, whole, member)


def kind_of(value: object) -> str:
    """The JSON name of a decoded value's kind (``object``, ``array``, ...), never the value."""
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case dict():
            return "object"
        case list() | tuple():
            return "array"
        case bytes() | bytearray():
            return "binary"
    return type(value).__name__


def decoder_detail(error: BaseException) -> str:
    """The decoder's own message, without any value it quotes: detail after tidings' words."""
    return _VALUE_QUOTED.sub(r"\1", str(error))


def _problem(
    error: msgspec.ValidationError,
    kind: str,
    members: Collection[str] | None,
    schema: type[msgspec.Struct],
    whole: str,
    member: str,
) -> str:
    if kind != "object":
        return f"{whole} must be an object, got {kind}"
    fields = msgspec.structs.fields(schema)
    if members is not None:
        missing = [
            field.encode_name for field in fields if field.required and field.encode_name not in members
        ]
        if missing:
            return f"required {member} {missing[0]!r} is missing ({decoder_detail(error)})"
    at = _PATH_MEMBER.search(str(error))
    if at is not None and at.group(1) in {field.encode_name for field in fields}:
        return f"{member} {at.group(1)!r} has a wrong type or value ({decoder_detail(error)})"
    return f"{whole} does not fit its schema ({decoder_detail(error)})"
