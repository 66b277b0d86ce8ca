"""How deeply event data may nest: one limit that every writer checks and every reader can decode.

msgspec's encoders and decoders recurse once per level of nesting, and on CPython 3.11 a thread's
whole stack (its Python frames and these levels) shares one recursion limit (1,000 by default):
the same data decodes at the top of a worker thread and fails deep in a consumer's call stack.
So tidings refuses data nested deeper than ``MAX_DEPTH`` wherever data enters (publish, append,
save) and wherever it is read (bus messages, stored rows): what a producer may publish, every
consumer can decode, with some 850 levels of stack to spare, in any thread.
"""

from __future__ import annotations

import itertools
import operator
from typing import Final

from tidings.errors import MalformedEvent

#: Levels of arrays and objects that event data may nest (``{"a": [1]}`` nests 2 levels).
MAX_DEPTH: Final = 128

_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_SQUARE: Final = bytes.maketrans(b"{}", b"[]")


def nested_deeper(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON ``data`` nests arrays and objects more than ``limit`` levels deep.

    Measured without recursion and in C-speed passes: nearly all data is decided by counting
    (data of ``2 * limit`` bytes or fewer, or with no more opening brackets than the limit,
    cannot be deeper). Else escapes and strings are dropped (brackets in strings do not nest),
    and the depth before each closing bracket is the opening brackets so far less the closing
    ones. Malformed JSON is the decoder's to refuse: here it is only measured, never an error.
    """
    if len(data) <= 2 * limit or data.count(b"[") + data.count(b"{") <= limit:
        return False
    if b'"' in data:
        # Escaped backslashes first, so that in ``\\"`` the quote still ends its string; then
        # every other quote opens or closes a string, and the pieces between pairs are outside.
        unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
        data = b"".join(unescaped.split(b'"')[::2])
    brackets = data.translate(_SQUARE, _NOT_BRACKETS)
    # Each pass takes away the innermost pairs, one level: well-formed data of ordinary depth is
    # gone after a few passes in C. What is left after ``limit`` passes, or stops shrinking
    # (unbalanced brackets), is measured exactly.
    remaining = brackets
    for _ in range(limit):
        if not remaining:
            return False
        shorter = remaining.replace(b"[]", b"")
        if len(shorter) == len(remaining):
            break
        remaining = shorter
    runs = brackets.split(b"]")  # the opening brackets between closings
    depth: int = max(map(operator.sub, itertools.accumulate(map(len, runs)), itertools.count()))
    return depth > limit


def check_depth(data: bytes, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON ``data`` nested deeper than the limit, in the limit's words."""
    if nested_deeper(data, limit):
        raise MalformedEvent(too_deep(what, limit))


def too_deep(what: str, limit: int = MAX_DEPTH) -> str:
    """The words for data nested too deeply, also where a decoder ran out of stack first."""
    return f"{what} is {deeper_than(limit)}"


def deeper_than(limit: int = MAX_DEPTH) -> str:
    return f"nested too deeply: more than {limit} levels (tidings' limit for event data)"
