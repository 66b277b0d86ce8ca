"""How an envelope is laid out in a row of ``tidings_events``, and the hash that chains rows.

The CloudEvents attributes that every event has (and that readers filter or show) are columns;
the rare ones travel in one small JSON column, ``extras``, which is NULL for most events; the data
is stored exactly as encoded. Reading a row builds the envelope from its columns without parsing
a document, which keeps reading the log close to the speed of the raw driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import msgspec

from tidings.domain.envelope import JSON, Envelope, RecordedEvent, validate_envelope
from tidings.domain.integrity import GENESIS, chain_hash
from tidings.errors import IntegrityError, InvalidArgument

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

#: The envelope columns, in the order that rows are written and read.
EVENT_COLUMNS: Final = (
    "id, topic, type, time_us, source, subject, schemaversion, correlationid, causationid, extras, data"
)


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgument(f"a time zone is required, got naive datetime {moment.isoformat()}")
    since = moment - _EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class _Extras(msgspec.Struct, frozen=True, omit_defaults=True):
    """The attributes that most events leave out."""

    datacontenttype: str = JSON
    dataschema: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    expirytime: datetime | None = None
    partitionkey: str | None = None


_NO_EXTRAS: Final = _Extras()
_extras_decoder = msgspec.json.Decoder(_Extras)
_canonical = msgspec.msgpack.Encoder()


def _extras_of(envelope: Envelope) -> bytes | None:
    if (
        envelope.datacontenttype == JSON
        and envelope.dataschema is None
        and envelope.traceparent is None
        and envelope.tracestate is None
        and envelope.expirytime is None
        and envelope.partitionkey is None
    ):
        return None
    extras = _Extras(
        datacontenttype=envelope.datacontenttype,
        dataschema=envelope.dataschema,
        traceparent=envelope.traceparent,
        tracestate=envelope.tracestate,
        expirytime=envelope.expirytime.astimezone(UTC) if envelope.expirytime else None,
        partitionkey=envelope.partitionkey,
    )
    return None if extras == _NO_EXTRAS else msgspec.json.encode(extras)


class EventColumns(NamedTuple):
    """The envelope's columns, as written and as read back."""

    id: str
    topic: str
    type: str
    time_us: int
    source: str
    subject: str | None
    schemaversion: int
    correlationid: str | None
    causationid: str | None
    extras: bytes | None
    data: bytes

    @classmethod
    def of(cls, envelope: Envelope) -> EventColumns:
        return cls(
            envelope.id,
            envelope.topic,
            envelope.type,
            to_micros(envelope.time),
            envelope.source,
            envelope.subject,
            envelope.schemaversion,
            envelope.correlationid,
            envelope.causationid,
            _extras_of(envelope),
            envelope.data,
        )

    def digest(self, previous: bytes, stream: str, version: int) -> bytes:
        """This event's link in its stream's hash chain (msgpack is canonical for these types)."""
        return chain_hash(previous, _canonical.encode((stream, version, *self)))


class NewRow(NamedTuple):
    """One row to insert: where it goes, the envelope's columns, and its chain hash."""

    stream: str
    version: int
    partition: int
    columns: EventColumns
    hash: bytes

    def values(self) -> tuple[Any, ...]:
        """In the order of ``INSERT_COLUMNS``."""
        return (self.stream, self.version, self.partition, *self.columns, self.hash)


INSERT_COLUMNS: Final = f"stream, version, partition, {EVENT_COLUMNS}, hash"


def plan_rows(
    stream: str,
    envelopes: Sequence[Envelope],
    head: tuple[int, bytes] | None,
    partition_of: Any,
    max_size: int,
) -> list[NewRow]:
    """Check, number and chain new envelopes after the stream's head."""
    version, previous = head if head is not None else (0, GENESIS)
    rows: list[NewRow] = []
    for envelope in envelopes:
        validate_envelope(envelope, max_size)
        version += 1
        columns = EventColumns.of(envelope)
        previous = columns.digest(previous, stream, version)
        rows.append(NewRow(stream, version, partition_of(envelope.partitionkey or stream), columns, previous))
    return rows


#: What a read selects: where the event is, its columns, its hash.
SELECT_COLUMNS: Final = f"position, stream, version, {EVENT_COLUMNS}, hash"
#: What a read of the log selects: the same without the hash, which only a stream read can check.
LOG_COLUMNS: Final = f"position, stream, version, {EVENT_COLUMNS}"


def record_of(row: Sequence[Any]) -> RecordedEvent:
    """A ``RecordedEvent`` from a row selected with ``SELECT_COLUMNS`` or ``LOG_COLUMNS``."""
    return records_of((row,))[0]


def records_of(rows: Iterable[Sequence[Any]]) -> list[RecordedEvent]:
    """``RecordedEvent``s from rows selected with ``SELECT_COLUMNS`` or ``LOG_COLUMNS``.

    The events of one append share their time, so consecutive rows often carry the same
    ``time_us``: the datetime is made once per run of them (it is the costliest field to build).
    """
    records: list[RecordedEvent] = []
    last_us: int | None = None
    moment = _EPOCH
    for row in rows:
        time_us = row[6]
        if time_us != last_us:
            last_us, moment = time_us, _EPOCH + timedelta(microseconds=time_us)
        extras = row[12]
        if extras is None:
            envelope = Envelope(
                id=row[3],
                topic=row[4],
                type=row[5],
                time=moment,
                source=row[7],
                subject=row[8],
                schemaversion=row[9],
                correlationid=row[10],
                causationid=row[11],
                data=bytes(row[13]),
            )
        else:
            envelope = _with_extras(row, moment, extras)
        records.append(RecordedEvent(envelope=envelope, stream=row[1], version=row[2], position=row[0]))
    return records


def _with_extras(row: Sequence[Any], moment: datetime, extras: bytes) -> Envelope:
    try:
        more = _extras_decoder.decode(extras)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IntegrityError(f"stored event at position {row[0]} has damaged extras: {exc}") from None
    return Envelope(
        id=row[3],
        topic=row[4],
        type=row[5],
        time=moment,
        source=row[7],
        subject=row[8],
        schemaversion=row[9],
        correlationid=row[10],
        causationid=row[11],
        data=bytes(row[13]),
        datacontenttype=more.datacontenttype,
        dataschema=more.dataschema,
        traceparent=more.traceparent,
        tracestate=more.tracestate,
        expirytime=more.expirytime,
        partitionkey=more.partitionkey,
    )


def row_digest(previous: bytes, row: Sequence[Any]) -> bytes:
    """The chain link that a row selected with ``SELECT_COLUMNS`` should carry.

    ``row[1:14]`` is (stream, version, *envelope columns): the very tuple ``EventColumns.digest``
    hashed when the row was written. The drivers hand back what was written (str, int, None,
    bytes), so the canonical bytes match exactly.
    """
    return chain_hash(previous, _canonical.encode(row[1:14]))
