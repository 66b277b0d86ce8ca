"""The runtime: written once, against the ports.

How an event flows (this issue covers the store side; the bus side grows from it)::

    App.append / App.save(aggregate)
        └─ codec.encode ─ access guard (may the principal publish the topic?), then
           Event → Envelope (CloudEvents attributes, msgspec JSON data)
            └─ EventStore.append ─ one transaction: stream head check, hash chain, log position
    App.load(Aggregate)
        └─ snapshot (if fresh enough) + EventStore.read_stream ─ chain checked ─ codec.decode
    App.project(Projection)
        └─ EventStore.read_log after the checkpoint ─ handle ─ documents + checkpoint, one commit
"""
