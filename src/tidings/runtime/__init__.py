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
    App.running ─ each worker gets the open App's Services (services.py), never the App:
    │  the store, its GroupState (leases, inbox, dead letters), the Feed that groups read (the
    │  store's own, or the bus's in distributed mode), codec, clock, wake-ups, keys
        ├─ Relay (outbox) ─ the store's Feed, per leased partition ─ Bus.publish
        ├─ GroupConsumer (consuming) ─ lease loop (GroupState.lease); Feed.read_partition per
        │   │  leased partition after the checkpoint; one GroupState.handled look per batch
        │   ├─ dispatch ─ per event: duplicate ─ parked ─ codec.decode (malformed,
        │   │  undecryptable, erased) ─ deadline ─ handler(event, Context) with retries
        │   │  └─ an Outcome: Done | Skipped | Dead(Letter)
        │   ├─ settling ─ the Batch: handled events' units of work wait, then inbox records
        │   │  (tx.groups), effects and checkpoint commit in one transaction fenced by the lease
        │   └─ deadletter ─ Dead → a DeadLetter in that commit; parked keys (ordered
        │      groups); redrive beside the loop (aside), each run fenced and committed alone
        └─ TimerWorker (timers) ─ due timers appended (saga timeouts: saga_engine)

Seen from outside (``telemetry.py``, ``monitoring.py``): a ``send`` span around each way in, its
context stored in the envelope (``traceparent``); a ``process`` span per event in a group, its
parent that context; ``settle`` spans for commits, retries and dead letters; and a sampler beside
the workers for lag, dead letters and the relay (``tidings run --metrics-port``). Without an
OpenTelemetry SDK all of it is the API's no-op.

With encryption on, the store and the feeds are wrapped once where they are opened
(``sealed_store.py``): appends seal, reads load the keys that the codec opens with; the keyring
keeps its keys in the store's KeyStore part (``keyring.py``).
"""
