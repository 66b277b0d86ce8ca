"""W3C Trace Context (level 1) syntax, checked: the ``traceparent`` and ``tracestate`` that an
envelope carries may come from anyone who can write to the store or the bus, so tidings reads
them only if they are well formed (https://www.w3.org/TR/trace-context/, sections 3.2 and 3.3).
Pure syntax: what a tracer makes of them is ``runtime/telemetry.py``'s business."""

from __future__ import annotations

import re
from typing import Final

# version "-" trace-id "-" parent-id "-" trace-flags, lowercase hex only (3.2.2). A later
# version may append fields after a "-" (3.2.4): its first four fields are read all the same.
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII)
_ZERO_TRACE: Final = "0" * 32
_ZERO_PARENT: Final = "0" * 16
# A list-member's key (3.3.1.3.1): a simple key, or tenant@system for multi-tenant vendors.
_KEY: Final = r"(?:[a-z][a-z0-9_*/-]{0,255}|[a-z0-9][a-z0-9_*/-]{0,240}@[a-z][a-z0-9_*/-]{0,13})"
# Its value (3.3.1.3.2): printable ASCII but "," and "=", ending with no space.
_VALUE: Final = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER: Final = re.compile(f"({_KEY})=({_VALUE})", re.ASCII)
#: What tidings reads of a ``tracestate`` at the most (the spec's floor for what a vendor must
#: pass on, section 3.3.1.5): a longer one is dropped, not cut, so no member is read in half.
MAX_TRACESTATE: Final = 512
MAX_MEMBERS: Final = 32


def valid_traceparent(value: str) -> bool:
    """Whether ``value`` is a ``traceparent`` that may be read: not version ff, the ids not all
    zeros, and version 00 exactly as long as its four fields."""
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return False
    version, trace_id, parent_id, _, rest = found.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return False
    return rest is None or version != "00"


def valid_tracestate(value: str) -> bool:
    """Whether ``value`` is a ``tracestate`` that may be read: at most 32 list-members, each
    key=value in the spec's characters, no key twice, 512 characters at the most."""
    if len(value) > MAX_TRACESTATE:
        return False
    keys: set[str] = set()
    for member in value.split(","):
        member = member.strip(" \t")
        if not member:  # empty members are allowed, and ignored (3.3.1.2)
            continue
        found = _MEMBER.fullmatch(member)
        if found is None or found[1] in keys:
            return False
        keys.add(found[1])
    return len(keys) <= MAX_MEMBERS


def checked(traceparent: str | None, tracestate: str | None) -> tuple[str | None, str | None, bool]:
    """The trace context of an envelope that may be read, and whether any was dropped. A
    ``tracestate`` means nothing without its ``traceparent`` (3.3): it goes with a dropped one."""
    if traceparent is None:
        return None, None, tracestate is not None
    if not valid_traceparent(traceparent):
        return None, None, True
    if tracestate is not None and not valid_tracestate(tracestate):
        return traceparent, None, True
    return traceparent, tracestate, False
