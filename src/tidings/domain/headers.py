"""Attribute values in message headers, as the CloudEvents protocol bindings carry them.

A NATS header value may hold printable US-ASCII only (NATS protocol binding §3.1.3.2, the rule of
the HTTP binding too), so every attribute value is percent-encoded on the way out: space, ``"``,
``%`` and every character outside U+0021..U+007E become the ``%XY`` of their UTF-8 bytes, in
upper case. On the way in, a value that is an RFC 7230 quoted string is unquoted first (older
producers sent those), then one round of ``%XY`` is decoded (either case), and bytes that are no
valid UTF-8 are refused (so is an overlong ``%C0%A0``).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

# Printable ASCII but for '"' and '%': what a value may keep as it is.
_SAFE: Final = "".join(chr(code) for code in range(0x21, 0x7F) if chr(code) not in '"%')
_NEEDS_ENCODING: Final = re.compile(r"[^!#$&-~]")  # the complement of _SAFE, as a character class
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class HeaderError(ValueError):
    """A header value or name that no binding allows; the message says why."""


def needs_encoding(value: str) -> bool:
    """Whether ``value`` holds a character that a header value may not carry as it is."""
    return _NEEDS_ENCODING.search(value) is not None


def percent_encode(value: str) -> str:
    """The header form of an attribute value (upper-case ``%XY`` of its UTF-8 bytes where needed).

    Raises ``HeaderError`` for a string that is no Unicode text (a lone surrogate has no UTF-8).
    """
    if _NEEDS_ENCODING.search(value) is None:
        return value  # the common case: nothing to encode
    try:
        return quote(value, safe=_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise HeaderError(f"not valid Unicode text at character {exc.start}") from None


def percent_decode(value: str) -> str:
    """The attribute value a header carries: unquoted, then one round of ``%XY`` decoded.

    Raises ``HeaderError`` for a broken quoted string, a ``%`` without two hexadecimal digits,
    or decoded bytes that are no valid UTF-8.
    """
    if value[:1] == '"':
        value = _unquote(value)
    if "%" not in value:
        if not value.isascii():
            _check_unicode(value)  # raw non-ASCII (against the binding, but unambiguous) is kept
        return value
    pieces = value.split("%")
    decoded = bytearray(pieces[0].encode("utf-8", "surrogatepass"))
    for piece in pieces[1:]:
        if len(piece) < 2 or piece[0] not in _HEX or piece[1] not in _HEX:
            raise HeaderError("'%' is not followed by two hexadecimal digits")
        decoded.append(int(piece[:2], 16))
        decoded += piece[2:].encode("utf-8", "surrogatepass")
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HeaderError(f"the percent-encoded bytes are no valid UTF-8 (at byte {exc.start})") from None


def _unquote(value: str) -> str:
    """The content of an RFC 7230 quoted string (``"..."`` with backslash escapes)."""
    end = len(value) - 1
    if end < 1 or value[end] != '"':
        raise HeaderError("a quoted value has no closing '\"'")
    out: list[str] = []
    at = 1
    while at < end:
        char = value[at]
        if char == "\\":
            if at + 1 >= end:
                raise HeaderError("a quoted value ends in a lone '\\'")
            out.append(value[at + 1])
            at += 2
        elif char == '"':
            raise HeaderError("a quoted value holds an unescaped '\"'")
        else:
            out.append(char)
            at += 1
    return "".join(out)


def _check_unicode(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HeaderError(f"not valid Unicode text at character {exc.start}") from None
