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
_NOT_MARKS: Final = bytes(b for b in range(256) if b not in b'[]{}"\\')
_SQUARE: Final = bytes.maketrans(b"{}", b"[]")


def nested_deeper(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON ``data`` nests arrays and objects more than ``limit`` levels deep.

    Measured without recursion and in C-speed passes: nearly all data is decided by counting
    (data of ``2 * limit`` bytes or fewer, or with no more opening brackets than the limit,
    cannot be deeper). Else strings are dropped (brackets in strings do not nest), and the depth
    before each closing bracket is the opening brackets so far less the closing ones. Malformed
    JSON is the decoder's to refuse: here it is only measured, never an error.
    """
    if len(data) <= 2 * limit:
        return False
    # Brackets, quotes and backslashes only: some 4 times shorter than the data, in one pass.
    marks = data.translate(None, _NOT_MARKS)
    if marks.count(b"[") + marks.count(b"{") <= limit:
        return False
    # Where no string holds a bracket, a backslash or a quote of its own (nearly all data), each
    # string is left as an empty pair of quotes, which one pass from the left takes away, pairs
    # only: a string with anything left in it keeps its opening quote, and is measured below.
    bare = marks.replace(b'""', b"")
    if b'"' not in bare:
        return _deeper(bare.translate(_SQUARE), limit)
    # Escaped backslashes first, so that in ``\\"`` the quote still ends its string; then every
    # other quote opens or closes a string, and the pieces between pairs are outside.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    return _deeper(outside.translate(_SQUARE, _NOT_BRACKETS), limit)


def _deeper(brackets: bytes, limit: int) -> bool:
    """Whether a run of ``[`` and ``]`` (objects' brackets made square) nests deeper than ``limit``."""
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


# msgpack's type bytes (https://github.com/msgpack/msgpack/blob/master/spec.md): for each, the
# bytes its header takes, and how a value of it goes on (see ``_msgpack_step``).
_MSGPACK_CONTAINERS: Final = bytes(b for b in range(256) if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
_NOT_MSGPACK_CONTAINERS: Final = bytes(b for b in range(256) if b not in _MSGPACK_CONTAINERS)
#: Scalars of a fixed size, by type byte: nil, false, true, floats, ints, fixext.
_MSGPACK_FIXED: Final = {
    0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9,
    0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9,
    0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18,
}  # fmt: skip
#: Strings, binaries and exts: type byte -> (bytes of the length, bytes after it besides the data).
_MSGPACK_SIZED: Final = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
    0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
}  # fmt: skip
#: Arrays and maps of 16 and 32-bit counts: type byte -> (bytes of the count, items per count).
_MSGPACK_COUNTED: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def msgpack_nested_deeper(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the msgpack ``data`` nests arrays and maps more than ``limit`` levels deep.

    msgspec's msgpack decoder recurses as its JSON decoder does, so msgpack data is held to the
    same limit. Measured by walking the values with a stack of counts, no recursion; data with no
    more container headers than the limit (counted in C, type bytes and others alike) cannot be
    deeper, which decides nearly all data without the walk. Malformed data is the decoder's to
    refuse: here it is only measured, never an error.
    """
    if len(data) <= limit or len(data.translate(None, _NOT_MSGPACK_CONTAINERS)) <= limit:
        return False
    pending = [1]  # per open level, the values still to read in it (the top level: one)
    at, end = 0, len(data)
    while pending:
        if at >= end:
            return False  # cut short: malformed
        pending[-1] -= 1
        kind = data[at]
        items = 0
        if kind <= 0x7F or kind >= 0xE0:  # positive and negative fixints
            at += 1
        elif kind <= 0x8F:  # fixmap
            items, at = 2 * (kind & 0x0F), at + 1
        elif kind <= 0x9F:  # fixarray
            items, at = kind & 0x0F, at + 1
        elif kind <= 0xBF:  # fixstr
            at += 1 + (kind & 0x1F)
        elif kind in _MSGPACK_FIXED:
            at += _MSGPACK_FIXED[kind]
        elif kind in _MSGPACK_SIZED:
            width, extra = _MSGPACK_SIZED[kind]
            at += 1 + width + extra + int.from_bytes(data[at + 1 : at + 1 + width], "big")
        elif kind in _MSGPACK_COUNTED:
            width, per = _MSGPACK_COUNTED[kind]
            items, at = per * int.from_bytes(data[at + 1 : at + 1 + width], "big"), at + 1 + width
        else:
            return False  # 0xC1, never used: malformed
        if kind in _MSGPACK_CONTAINERS:
            if len(pending) > limit:  # this container opens level len(pending)
                return True
            if items:
                pending.append(items)
        while pending and not pending[-1]:
            pending.pop()
    return False


def check_msgpack_depth(data: bytes, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse msgpack ``data`` nested deeper than the limit, in the limit's words."""
    if msgpack_nested_deeper(data, limit):
        raise MalformedEvent(too_deep(what, limit))
