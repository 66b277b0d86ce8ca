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
        ├─ GroupConsumer (consuming) ─ lease loop; the feed, per leased partition, after the
        │   │  checkpoint; one inbox lookup per batch
        │   ├─ dispatch ─ per event: duplicate ─ parked ─ codec.decode (malformed,
        │   │  undecryptable, erased) ─ deadline ─ handler(event, Context) with retries
        │   │  └─ an Outcome: Done | Skipped | Dead(Letter)
        │   ├─ settling ─ the Batch: handled events' units of work wait, then inbox records,
        │   │  effects and checkpoint commit in one transaction fenced by the lease
        │   └─ deadletter ─ Dead → a DeadLetter in that commit; parked keys (ordered
        │      groups); redrive beside the loop (aside), each run fenced and committed alone
        └─ TimerWorker (timers) ─ due timers appended (saga timeouts: saga_engine)
"""
