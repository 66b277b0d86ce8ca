"""Many requests in flight over one connection: each gets its own reply subject under a single
wildcard subscription, and the replies are routed to it by the last token of their subject."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

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


OnReply = Callable[[Msg], None]


class Inbox:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = client.new_inbox()
        self._tokens = itertools.count()
        self._routes: dict[str, OnReply] = {}

    @classmethod
    async def open(cls, client: Client) -> Inbox:
        inbox = cls(client)
        await client.subscribe(f"{inbox._prefix}.*", cb=inbox._route)
        return inbox

    def reply_to(self, on_reply: OnReply) -> tuple[str, Callable[[], None]]:
        """A reply subject whose messages go to ``on_reply``, and how to stop routing them."""
        token = str(next(self._tokens))
        self._routes[token] = on_reply

        def forget() -> None:
            self._routes.pop(token, None)

        return f"{self._prefix}.{token}", forget

    async def _route(self, message: Msg) -> None:
        on_reply = self._routes.get(message.subject.rpartition(".")[2])
        if on_reply is not None:  # else the answer to a request that gave up waiting
            on_reply(message)
