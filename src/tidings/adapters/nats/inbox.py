"""Many requests in flight over one connection: each gets its own reply subject under a single
wildcard subscription, and the replies are routed to it by the last token of their subject."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

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
