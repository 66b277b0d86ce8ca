"""The domain layer: events, envelopes, topics, aggregates. Pure Python: no I/O, no asyncio."""
