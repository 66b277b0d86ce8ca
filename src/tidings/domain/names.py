"""The one rule for the names that reach the store as text: stream names, keys, encryption scopes.

A name is 1 to ``MAX_NAME`` characters, holds no control character (NUL included: PostgreSQL
cannot store one in text, and a name with a line break forges log lines) and no lone surrogate
(it cannot be encoded as UTF-8, so no engine can store it). Whatever breaks the rule is an
``InvalidArgument`` at the door, named in tidings' words, never a driver error deep inside a
transaction (where a NUL in a key once read as the store being down, and was retried forever).

Stream names may hold DEL and the C1 controls (U+007F to U+009F): every engine stores them,
tidings took them before this rule (it refused C0 only), and refusing them now would make such
streams, already stored, neither readable nor appendable. Where a stream name is shown, they are
escaped (``escape_controls``, ``repr``), and so in the ``subject`` of its events, as CloudEvents
text holds no control character. Keys stay strict: a key is a CloudEvents attribute as it is.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from tidings.domain.attributes import escape_controls, has_control
from tidings.errors import InvalidArgument

#: The longest stream name, key or scope, in characters.
MAX_NAME: Final = 512


def check_stream_name(stream: object) -> str:
    """``stream`` if it is a valid stream name (DEL and C1 controls pass), else ``InvalidArgument``."""
    return check_name("stream name", stream, c1_controls=True)


def check_name(what: str, name: object, *, max_length: int = MAX_NAME, c1_controls: bool = False) -> str:
    """``name`` if it is a valid ``what`` (``"key"``, ``"encryption scope"``, ...), else
    ``InvalidArgument`` saying what is wrong with it; ``c1_controls``: DEL and C1 controls pass."""
    if not isinstance(name, str):
        raise InvalidArgument(f"a {what} must be text, got {type(name).__name__}")
    if 1 <= len(name) <= max_length and name.isprintable():
        return name  # the common case, checked in C
    if not 1 <= len(name) <= max_length:
        got = f"{len(name)}: {name[:60]!r}"
        raise InvalidArgument(f"a {what} must be 1 to {max_length} characters, got {got}")
    for at, char in enumerate(name):
        if char.isprintable():
            continue
        kind = unicodedata.category(char)
        if kind == "Cc" and (char < "\x20" or not c1_controls):
            raise InvalidArgument(f"{what} {name[:60]!r} contains a control character ({char!r} at {at})")
        if kind == "Cs":
            raise InvalidArgument(
                f"{what} {name[:60]!r} contains a lone surrogate ({char!r} at {at}), which is not valid UTF-8"
            )
    return name


def has_refused_control(name: str) -> bool:
    """Whether ``name`` holds a control character that the rule refuses (C0, NUL included)."""
    return not name.isprintable() and any(char < "\x20" for char in name)


def subject_of(stream: str) -> str:
    """The CloudEvents ``subject`` of a stream's events: its name, DEL and C1 controls escaped."""
    return escape_controls(stream) if has_control(stream) else stream
