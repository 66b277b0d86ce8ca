"""Event ids: UUIDv7 (RFC 9562), so that ids sort by creation time.

Events published while a group handles another get ids derived from that event, the group and
their place in the handler's run (``publication_id``): a handler run again publishes the same
ids, and the store keeps the first of each. Nothing in tidings orders by id (the log orders by
position); the time prefix only keeps an index's inserts near its end.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MS = 0xFFFF_FFFF_FFFF  # the 48 bits of a UUIDv7's time
_lock = threading.Lock()
_last_ms = 0
_counter = 0
_random = b""  # a pool of OS randomness, refilled 4 KiB at a time: one system call per 512 ids
_offset = 0


def uuid7() -> str:
    """A new UUIDv7 as text; ids made in one process sort in the order they were made.

    Within one millisecond the 12-bit ``rand_a`` field is a counter seeded at random
    (RFC 9562, section 6.2, method 1), so ids stay monotonic under bursts; the 62 bits of
    ``rand_b`` come from the operating system's CSPRNG.
    """
    global _last_ms, _counter, _random, _offset
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter spent: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms = now_ms
            _counter = -1  # seeded below from the random pool
        if _offset + 10 > len(_random):
            _random, _offset = os.urandom(4096), 0
        chunk = _random[_offset : _offset + 10]
        _offset += 10
        if _counter < 0:
            _counter = int.from_bytes(chunk[8:], "big") & 0x7FF
        counter = _counter
    rand_b = int.from_bytes(chunk[:8], "big") & 0x3FFF_FFFF_FFFF_FFFF
    return _uuid7_text(now_ms, counter, rand_b)


def publication_id(cause: str, cause_time: datetime, group: str, sequence: int) -> str:
    """The id of the ``sequence``-th event (from 0) published while ``group`` handles the event
    ``cause`` (stamped ``cause_time``): the same inputs give the same id, on any machine.

    A UUIDv7 whose time is the cause's (RFC 9562, section 6.1 allows an altered timestamp: an
    id made later for the same publication must be equal) and whose 74 other bits are a SHA-256
    of the inputs, with tidings' own label so that no other use of the hash collides with it.
    """
    name = json.dumps(["tidings.publication", cause, group, sequence]).encode()
    digest = int.from_bytes(hashlib.sha256(name).digest()[:10], "big")
    if cause_time.tzinfo is None:  # a foreign producer's time without a zone is read as UTC
        cause_time = cause_time.replace(tzinfo=UTC)
    milliseconds = (cause_time - _EPOCH) // timedelta(milliseconds=1)
    clamped = min(max(milliseconds, 0), _MAX_MS)  # a time before 1970 still makes an id
    return _uuid7_text(clamped, digest >> 68, digest & 0x3FFF_FFFF_FFFF_FFFF)


def _uuid7_text(unix_ms: int, rand_a: int, rand_b: int) -> str:
    """A UUIDv7 of its three fields (48, 12 and 62 bits), as text."""
    value = (unix_ms & _MAX_MS) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
