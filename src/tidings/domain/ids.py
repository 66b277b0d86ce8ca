"""Event ids: UUIDv7 (RFC 9562), so that ids sort by creation time."""

from __future__ import annotations

import os
import threading
import time

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
    value = (now_ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
