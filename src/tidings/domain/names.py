"""The one rule for the names that reach the store as text: stream names, keys, encryption scopes.

A name is 1 to ``MAX_NAME`` characters, holds no control character (NUL included: PostgreSQL
cannot store one in text, and a name with a line break forges log lines) and no lone surrogate
(it cannot be encoded as UTF-8, so no engine can store it). Whatever breaks the rule is an
``InvalidArgument`` at the door, named in tidings' words, never a driver error deep inside a
transaction (where a NUL in a key once read as the store being down, and was retried forever).
"""

from __future__ import annotations

import unicodedata
from typing import Final

from tidings.errors import InvalidArgument

#: The longest stream name, key or scope, in characters.
MAX_NAME: Final = 512


def check_name(what: str, name: object, *, max_length: int = MAX_NAME) -> str:
    """``name`` if it is a valid ``what`` (``"stream name"``, ``"key"``, ...), else
    ``InvalidArgument`` saying what is wrong with it."""
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
        if kind == "Cc":
            raise InvalidArgument(f"{what} {name[:60]!r} contains a control character ({char!r} at {at})")
        if kind == "Cs":
            raise InvalidArgument(
                f"{what} {name[:60]!r} contains a lone surrogate ({char!r} at {at}), which is not valid UTF-8"
            )
    return name
