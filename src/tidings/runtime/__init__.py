"""The runtime: written once, against the ports, and wired by the App (``tidings/app.py``).

How an event flows::

    App.append / App.save(aggregate) / App.publish
        └─ codec.encode ─ access guard (may the principal publish the topic?), then
           Event → Envelope (CloudEvents attributes, msgspec JSON data)
            └─ EventStore.append ─ one transaction: stream head check, hash chain, log position
    App.load(Aggregate)
        └─ snapshot (if fresh enough) + EventStore.read_stream ─ chain checked ─ codec.decode
    App.project(Projection)
        └─ EventStore.read_log after the checkpoint ─ handle ─ documents + checkpoint, one commit
    App.running ─ each worker gets the open App's Services (services.py), never the App
        ├─ Relay (outbox) ─ the store's log, per leased partition ─ Bus.publish
        ├─ GroupConsumer (consuming) ─ the feed, per leased partition, after the checkpoint
        │   └─ inbox ─ codec.decode ─ deadline ─ handler(event, Context) ─ its unit of work,
        │      inbox record and checkpoint, one commit; failed past its retries, malformed or
        │      late ─ DLQ (deadletter: redrive, parking)
        └─ TimerWorker (timers) ─ due timers appended (saga timeouts: saga_engine)
"""
