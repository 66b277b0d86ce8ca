"""The distributed bus: NATS JetStream (nats-py), fed from the store by the relay."""

from tidings.adapters.nats.bus import NatsBus, NatsSettings

__all__ = ["NatsBus", "NatsSettings"]
