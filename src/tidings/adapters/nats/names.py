"""The names tidings gives things on NATS: subject prefixes, reply subjects, read streams.

Pure functions, no client: the nats-server config that ``tidings acl nats-config`` prints is built
from them, and it must not need the NATS client installed.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence

from tidings.domain.topics import covers, overlaps
from tidings.errors import ConfigurationError


def check_prefix(prefix: str) -> str:
    """A subject prefix of tidings' own: not one of NATS's reserved spaces (``$JS.API``, replies
    under ``_INBOX``), where event subjects would mix with the server's and other clients'."""
    if prefix.startswith(("$", "_INBOX")) or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", prefix):
        raise ConfigurationError(
            f"subject prefix {prefix!r}: tokens of letters, digits, '_' and '-', not starting with "
            "'$' or '_INBOX' (NATS's own subjects)"
        )
    return prefix


#: nats-py's own reply prefix, for a client that logs in without a user.
DEFAULT_PREFIX = "_INBOX"


def inbox_prefix(user: str | None) -> str:
    """The reply subjects of a user's clients: ``_INBOX.<user>``, so that a server's permissions
    can give each user its own replies and no one else's (a direct get's reply holds events)."""
    if not user:
        return DEFAULT_PREFIX
    # A subject token cannot hold a dot (nor wildcards or spaces): such names go in hex, after a
    # "~", which no principal's name holds, so that they cannot meet a plain name.
    token = user if re.fullmatch(r"[A-Za-z0-9_@-]+", user) else "~" + user.encode().hex()
    return f"{DEFAULT_PREFIX}.{token}"


def read_patterns(principal: str, patterns: Sequence[str]) -> tuple[str, ...]:
    """The patterns a principal's read streams copy: those no other of its patterns covers (one
    source takes no overlapping filters, and a covered pattern adds nothing), in order. Patterns
    that overlap without one covering the other (``a.*.x`` and ``a.b.*``) cannot be copied once
    each: refused, naming them."""
    kept = sorted({p for p in patterns if not any(q != p and covers(q, p) for q in patterns)})
    for first, second in itertools.combinations(kept, 2):
        if overlaps(first, second):
            raise ConfigurationError(
                f"principal {principal!r}: subscribe patterns {first!r} and {second!r} overlap "
                "(some topic matches both) without one covering the other; the server cannot copy "
                "such topics to a read stream once: list the common topics as a pattern of their own"
            )
    return tuple(kept)


def read_stream(stream: str, partition: int, principal: str, patterns: Sequence[str]) -> str:
    """``<stream>_<p>_R<principal in hex>_<digest of its patterns>``: hex, as a stream name takes
    no dots and principals' names may hold them; the digest, as changing a source's filters
    makes the server copy the whole partition again into the same stream (and keep what it
    copied before): a policy change makes new read streams, with checkpoints of their own."""
    digest = hashlib.sha256("\n".join(read_patterns(principal, patterns)).encode()).hexdigest()[:8]
    return f"{stream}_{partition}_R{principal.encode().hex()}_{digest}"
