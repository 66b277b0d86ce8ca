"""The distributed bus: NATS JetStream (nats-py), fed from the store by the relay.

The bus is in ``bus`` (``NatsBus``, ``NatsSettings``); this package imports nothing itself, so that
the client-free parts (``names``, ``permissions``) work without the ``nats`` extra installed.
"""
