"""The distributed bus: NATS JetStream (nats-py), fed from the store by the relay.

The bus is in ``bus`` (``NatsBus``), its URL's settings in ``settings`` (``NatsSettings``); this
package imports nothing itself, so that the client-free parts (``names``, ``permissions``,
``settings``) work without the ``nats`` extra installed.
"""
