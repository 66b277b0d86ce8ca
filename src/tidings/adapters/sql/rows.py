"""How an envelope is laid out in a row of ``tidings_events``, and the hash that chains rows.

What SQL filters on is a column of its own: ``id`` (unique), ``topic`` (log patterns) and
``time_us`` (reading as of a time). Every other attribute travels packed in ``meta``, one
msgpack array that msgspec decodes in C, times included; the data is stored exactly as
encoded. Reading a row is then a narrow fetch and one decode, which keeps reading the log close
to the speed of the raw driver. ``time_us`` repeats ``meta``'s time for the index; ``verify``
checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import msgspec

from tidings.domain.attributes import ExtensionValue
from tidings.domain.envelope import JSON, SPEC_VERSION, Envelope, RecordedEvent, validate_envelopes
from tidings.domain.integrity import GENESIS, chain_hash
from tidings.errors import IntegrityError, InvalidArgument
from tidings.ports import Sealer

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgument(f"a time zone is required, got naive datetime {moment.isoformat()}")
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class Meta(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True, gc=False):
    """The attributes that SQL never filters on, packed; trailing defaults take no bytes."""

    type: str
    time: datetime
    source: str
    subject: str | None = None
    schemaversion: int = 1
    correlationid: str | None = None
    causationid: str | None = None
    datacontenttype: str = JSON
    dataschema: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    expirytime: datetime | None = None
    partitionkey: str | None = None
    extensions: dict[str, ExtensionValue] = {}  # other producers' attributes, kept as they came


_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(Meta)
_canonical = msgspec.msgpack.Encoder()


def pack_meta(envelope: Envelope) -> bytes:
    # Positional, in Meta's field order: keywords cost several times more in msgspec.
    return _meta_encoder.encode(
        Meta(
            envelope.type,
            envelope.time.astimezone(UTC),
            envelope.source,
            envelope.subject,
            envelope.schemaversion,
            envelope.correlationid,
            envelope.causationid,
            envelope.datacontenttype,
            envelope.dataschema,
            envelope.traceparent,
            envelope.tracestate,
            envelope.expirytime.astimezone(UTC) if envelope.expirytime else None,
            envelope.partitionkey,
            envelope.extensions,
        )
    )


def unpack_meta(meta: bytes, position: int) -> Meta:
    try:
        return _meta_decoder.decode(meta)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _damaged(position, exc) from None


def _damaged(position: int, exc: Exception) -> IntegrityError:
    return IntegrityError(f"stored event at position {position} is damaged: {exc}")


#: Columns in the order rows are written.
INSERT_COLUMNS: Final = "stream, version, partition, id, topic, correlation_id, time_us, meta, data, hash"
#: What a read of the log selects: where the event is, and the envelope.
LOG_COLUMNS: Final = "position, stream, version, id, topic, meta, data"
#: What a read of a stream selects: the same and the hash.
SELECT_COLUMNS: Final = f"{LOG_COLUMNS}, hash"
#: What ``verify`` selects: the same and the columns that repeat or derive from the envelope,
#: to compare with it (``position`` is left out of the hash: the log assigns it at insert).
AUDIT_COLUMNS: Final = f"{SELECT_COLUMNS}, time_us, partition, correlation_id"
#: What ``verify`` selects of the log, in position order, for the log digest.
LAYOUT_COLUMNS: Final = "position, stream, version"


def row_digest(previous: bytes, row: Sequence[Any]) -> bytes:
    """The chain link that a row selected with ``SELECT_COLUMNS`` should carry.

    ``row[1:7]`` is (stream, version, id, topic, meta, data): the very tuple hashed when the row
    was written. The drivers hand back what was written (str, int, bytes), so msgpack, which is
    canonical for these types, gives the same bytes.
    """
    return chain_hash(previous, _canonical.encode(row[1:7]))


class NewRow(NamedTuple):
    """One row to insert, in the order of ``INSERT_COLUMNS``."""

    stream: str
    version: int
    partition: int
    id: str
    topic: str
    correlation_id: str | None  # for `tidings trace`; the packed meta holds it too
    time_us: int
    meta: bytes
    data: bytes
    hash: bytes


def plan_rows(
    stream: str,
    envelopes: Sequence[Envelope],
    head: tuple[int, bytes] | None,
    partition_of: Any,
    max_size: int,
    seal: Sealer | None = None,
) -> list[NewRow]:
    """Check, number, seal (if asked) and chain new envelopes after the stream's head."""
    version, previous = head if head is not None else (0, GENESIS)
    rows: list[NewRow] = []
    validate_envelopes(envelopes, max_size)
    # The events of an append nearly always share one time (one object) and the stream's
    # partition: each is worked out once, not once an event.
    stream_partition: int | None = None
    last_time, time_us = None, 0
    for given in envelopes:
        version += 1
        envelope = given if seal is None else seal(stream, version, given)
        meta = pack_meta(envelope)
        content = (stream, version, envelope.id, envelope.topic, meta, envelope.data)
        previous = chain_hash(previous, _canonical.encode(content))
        if envelope.partitionkey:
            partition = partition_of(envelope.partitionkey)
        else:
            if stream_partition is None:
                stream_partition = partition_of(stream)
            partition = stream_partition
        if envelope.time is not last_time:  # datetimes are immutable: the same object, the same time
            last_time, time_us = envelope.time, to_micros(envelope.time)
        rows.append(
            NewRow(
                stream,
                version,
                partition,
                envelope.id,
                envelope.topic,
                envelope.correlationid or envelope.id,
                time_us,
                meta,
                envelope.data,
                previous,
            )
        )
    return rows


def record_of(row: Sequence[Any]) -> RecordedEvent:
    """A ``RecordedEvent`` from a row selected with ``LOG_COLUMNS`` or ``SELECT_COLUMNS``."""
    return records_of((row,))[0]


def records_of(rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
    """``RecordedEvent``s from rows selected with ``LOG_COLUMNS`` or ``SELECT_COLUMNS``."""
    records: list[RecordedEvent] = []
    decode = _meta_decoder.decode  # unpack_meta, inlined: a call a row is a tenth of the read
    for row in rows:
        try:
            meta = decode(row[5])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise _damaged(row[0], exc) from None
        # Positional: the field order of Envelope (see its definition); keywords cost 6x more.
        envelope = Envelope(
            row[3],  # id
            meta.source,
            meta.type,
            row[4],  # topic
            meta.time,
            bytes(row[6]),  # data
            meta.subject,
            SPEC_VERSION,
            meta.datacontenttype,
            meta.dataschema,
            meta.schemaversion,
            meta.correlationid,
            meta.causationid,
            meta.traceparent,
            meta.tracestate,
            meta.expirytime,
            meta.partitionkey,
            meta.extensions,
        )
        records.append(RecordedEvent(envelope, row[1], row[2], row[0]))
    return records
