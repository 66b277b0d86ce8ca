"""An access policy as nats-server permissions: one user per principal, allowed exactly the
subjects that tidings' bus uses for what the principal does, and nothing else (no blanket ``>``).

What the bus does on the wire (``bus.py``, ``publish.py``, ``reads.py``, ``inbox.py``):

* every App opens the bus: ``$JS.API.STREAM.INFO.<stream>_<p>`` for each partition, and replies
  (to JetStream requests, direct gets and publish acks) come to its ``_INBOX.<user>.<nuid>.*``
  subscription: each user has replies of its own (``names.inbox_prefix``), as a direct get's
  reply holds events that another principal must not read off a shared ``_INBOX.>``;
* an App with groups reads its principal's read streams (``views.py``: per partition, only the
  topics it may subscribe to) with ``$JS.API.DIRECT.GET.<read stream>``, never a partition
  stream (every topic), and listens to the doorbell ``<prefix>.wake``;
* the relay creates the streams (``$JS.API.STREAM.CREATE.<stream>_<p>``), asks where each stands
  (``$JS.API.STREAM.MSG.GET.<stream>_<p>``), publishes events on ``<prefix>.<p>.<topic>`` and
  rings the doorbell. Events reach NATS only through the relay, from the store, so no other
  principal publishes on event subjects: tidings checks their topics when they append. One
  store's log fills the streams, so one principal relays (a second ``relay = true`` is refused):
  junk on a partition subject can come from no one else.

No principal may subscribe to event subjects (``<prefix>.<p>.<topic>``): readers use direct
gets on their read streams, and nothing in tidings subscribes to an event subject. A grant per
subscribe pattern could not be kept to its topics: nats-server checks a subscription against its
allow list by matching the subscription's wildcards as if they were tokens, so an allowed
``payment.*`` lets ``payment.>`` in (the ``*`` takes the ``>``), and an allowed ``*`` lets ``>``
in, which receives every topic; a deny rule of the deeper subjects cannot be added when another
allowed pattern needs some of them (``["*", "audit.>"]``).

The relay's App also makes every principal's read streams (create, and update when the policy
changes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidings.adapters.nats.names import check_prefix, inbox_prefix, read_stream
from tidings.domain.policy import Policy, Principal
from tidings.errors import ConfigurationError


@dataclass(frozen=True)
class Permissions:
    """The subjects one principal may publish to and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def permissions_of(
    principal: Principal,
    *,
    prefix: str,
    stream: str,
    partitions: int,
    readers: Mapping[str, Sequence[str]] | None = None,
) -> Permissions:
    """``readers``: the subscribe patterns of the principals that read, whose read streams a
    relay principal makes."""
    # NATS takes no partial-token wildcards (``TIDINGS_*``): every partition's stream is named.
    streams = [f"{stream}_{partition}" for partition in range(partitions)]
    doorbell = f"{prefix}.wake"
    publish: list[str] = []
    subscribe = [f"{inbox_prefix(principal.name)}.>"]
    if principal.subscribe:
        # Reads from its own read streams only (``views.py``), which hold only its topics.
        own = [read_stream(stream, p, principal.name, principal.subscribe) for p in range(partitions)]
        publish += [f"$JS.API.STREAM.INFO.{name}" for name in own]
        publish += [f"$JS.API.DIRECT.GET.{name}" for name in own]
        # The doorbell only: never an event subject (see the module's docstring).
        subscribe.append(doorbell)
    if principal.relay:
        publish += [f"$JS.API.STREAM.{verb}.{name}" for name in streams for verb in ("INFO", "CREATE")]
        publish += [f"$JS.API.STREAM.MSG.GET.{name}" for name in streams]
        views = [
            read_stream(stream, p, reader, patterns)
            for reader, patterns in (readers or {}).items()
            for p in range(partitions)
        ]
        publish += [f"$JS.API.STREAM.{verb}.{name}" for name in views for verb in ("INFO", "CREATE")]
        publish += [f"{prefix}.{partition}.>" for partition in range(partitions)]
        publish.append(doorbell)
    return Permissions(tuple(dict.fromkeys(publish)), tuple(dict.fromkeys(subscribe)))


def authorization_block(policy: Policy, *, prefix: str, stream: str, partitions: int) -> str:
    """The ``authorization { users = [...] }`` block of a nats-server config for ``policy``."""
    if partitions < 1:
        raise ConfigurationError(f"partitions must be at least 1, got {partitions}")
    check_prefix(prefix)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", stream):
        raise ConfigurationError(f"stream name {stream!r}: only letters, digits, '_' and '-'")
    if not policy.principals:
        raise ConfigurationError(f"{policy.source}: no principals: nats-server would let everyone in")
    relays = [name for name, principal in policy.principals.items() if principal.relay]
    if len(relays) > 1:
        # One store feeds these streams (the bus refuses another store's log), so one principal
        # writes them: another one's grant would only let it publish what the relay must pass over.
        raise ConfigurationError(
            f"{policy.source}: principals {', '.join(map(repr, relays))} all have relay = true: the "
            f"streams {stream}_<p> carry one store's log, which one principal relays (run every "
            "relay of that store as it; give another store a stream name and a config of its own)"
        )
    lines = [
        f"# From {policy.source} by `tidings acl nats-config`: subjects {prefix}.<partition>.<topic>,",
        f"# streams {stream}_0 to {stream}_{partitions - 1}. Regenerate it when the policy changes.",
        f"# Each principal reads read streams of its own ({stream}_<p>_R<name in hex>_<patterns digest>),",
        "# which hold only the topics it may subscribe to; the relay principal makes them.",
        "authorization {",
        "  users = [",
    ]
    for principal in policy.principals.values():
        if principal.password is not None:
            credential = f"user: {_quote(principal.name)}, password: {_quote(principal.password)}"
        elif principal.nkey is not None:
            credential = f"nkey: {_quote(principal.nkey)}  # {principal.name}"
        else:
            raise ConfigurationError(
                f"{policy.source}: principal {principal.name!r} has neither a password nor an nkey: "
                "nats-server cannot tell it is who it says"
            )
        readers = {name: p.subscribe for name, p in policy.principals.items() if p.subscribe}
        allowed = permissions_of(
            principal, prefix=prefix, stream=stream, partitions=partitions, readers=readers
        )
        lines += ["    {", f"      {credential}"]
        lines += [
            "      permissions: {",
            "        publish: {",
            # An empty allow list would let everything through (nats-server reads it as no
            # list at all): a principal that may publish nothing is denied everything.
            *(_subjects("allow", allowed.publish) if allowed.publish else _subjects("deny", (">",))),
            "        }",
            "        subscribe: {",
            *_subjects("allow", allowed.subscribe),
            "        }",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    # A JSON string is a valid quoted string of the NATS config format (escapes included), and
    # inside quotes '$' is text, not a variable.
    return json.dumps(text)


def _subjects(rule: str, subjects: tuple[str, ...]) -> list[str]:
    # One subject a line (array items may be separated by newlines), for a reviewer's diff.
    return [f"          {rule}: [", *(f"            {_quote(s)}" for s in subjects), "          ]"]
