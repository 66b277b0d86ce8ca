"""The codec pipeline: an event becomes an envelope's data, and back.

Payloads are JSON encoded by msgspec, typed on the way in and schema-checked on the way out; there
is no pickle anywhere. Reading always hands out the current schema version of an event class:
data stored under an older version is lifted by the class's upcasters, one version at a time.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from tidings.domain.envelope import (
    DEFAULT_MAX_SIZE,
    JSON,
    MSGPACK,
    SHALLOW_JSON,
    SPEC_VERSION,
    Envelope,
    RecordedEvent,
    Stored,
    check_size,
    utf8_problem,
)
from tidings.domain.events import Erased, Event, EventRegistry, default_registry
from tidings.domain.ids import uuid7
from tidings.domain.names import subject_of
from tidings.domain.nesting import check_depth, check_msgpack_depth, too_deep
from tidings.domain.schema_problems import decoder_detail, json_problem, kind_of, value_problem
from tidings.errors import MalformedEvent, PayloadTooLarge, Undecryptable, UnknownEventType, describe
from tidings.runtime.crypto import SEALED
from tidings.runtime.keyring import Erasure, KeyRing
from tidings.runtime.master_key import ENV_KEY, ENV_KEY_FILE


class Codec:
    """Encodes events into envelopes and decodes envelopes into events of the current version."""

    def __init__(
        self,
        *,
        source: str,
        registry: EventRegistry = default_registry,
        max_size: int = DEFAULT_MAX_SIZE,
        guard: Callable[[str], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source = source
        #: When an event is encoded without a ``time`` of its own: the App's clock.
        self.now = now
        #: Called with the topic of every event encoded; raises if it may not be published
        #: (``runtime/access.py``). Every event enters the log through ``encode``.
        self.guard = guard
        self.registry = registry
        self.max_size = max_size
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}
        self._float_classes: dict[type[Event], bool] = {}
        self._fast: dict[str, tuple[msgspec.json.Decoder[Any], int, type[Event]]] = {}
        #: Opens sealed data (``use_keys``); without it sealed data fails.
        self.keys: KeyRing | None = None
        #: Whether data in the clear is read (an App with encryption refuses it unless told:
        #: else anyone who can write a row could slip in a forged event).
        self.plaintext_ok = True
        #: In distributed mode, how much data the bus carries in the message of an envelope
        #: (``Bus.room_for``): an event the relay could not publish is refused where it is made.
        self.bus_room: Callable[[str, Envelope, int], int] | None = None
        #: The subject ``encode`` last found printable (strings are immutable: the same object
        #: is printable still).
        self._printable_subject: str | None = None

    def use_keys(self, keys: KeyRing | None, *, accept_plaintext: bool = True) -> None:
        """Open sealed data with ``keys`` from now on (they come with the store, so an App sets
        them when it opens); ``accept_plaintext=False`` refuses data stored in the clear."""
        self.keys = keys
        self.plaintext_ok = accept_plaintext or keys is None

    def encode(
        self,
        event: Event,
        *,
        subject: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        expires_at: datetime | None = None,
        partition_key: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Envelope:
        """The envelope of ``event``. ``traceparent``/``tracestate``: the W3C trace context of the
        span it is sent in (``runtime/telemetry.py``), made by tidings, never taken from outside."""
        if not isinstance(event, Event) or not hasattr(event, "__event_type__"):
            raise MalformedEvent(
                f"{type(event).__name__} is not a declared event class "
                "(subclass tidings.Event with topic=...)"
            )
        if self.guard is not None:
            self.guard(event.__event_topic__)
        try:
            data = self._encoder.encode(event)
        except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
            raise MalformedEvent(f"cannot encode {event.__event_type__}: {exc}") from None
        except RecursionError:  # the stack ran out before the limit could be measured
            raise MalformedEvent(too_deep(f"cannot encode {event.__event_type__}: data")) from None
        # Every reader must be able to decode it, in any thread and deep in its own stack
        # (data too short to nest that deep is not measured: see SHALLOW_JSON).
        if len(data) > SHALLOW_JSON:
            check_depth(data, f"cannot encode {event.__event_type__}: data")
        if self._has_floats(type(event)):
            self._check_finite(event, data)
        if len(data) > self.max_size:
            check_size(data, self.max_size, f"payload of {event.__event_type__}")
        if subject is not None and subject is not self._printable_subject:
            # The events of an append share their stream's name, one string: it is looked at once.
            if subject.isprintable():
                self._printable_subject = subject
            else:
                subject = subject_of(subject)  # the stream name, valid as CloudEvents text
        # Positional, in Envelope's field order: keywords cost several times more in msgspec.
        return Envelope(
            event_id or uuid7(),
            self.source,
            event.__event_type__,
            event.__event_topic__,
            time or self.now(),
            data,
            subject,
            SPEC_VERSION,
            JSON,
            None,  # dataschema
            event.__event_version__,
            correlation_id,
            causation_id,
            traceparent,
            tracestate,
            expires_at,
            partition_key,
        )

    def check_fits(self, stream: str, envelope: Envelope) -> None:
        """Refuse an envelope (from ``encode``) that could not be published whole in ``stream``:
        with encryption on, its data must fit the limit sealed (the header, nonce and tag come on
        top of what ``encode`` measured), as a timer that fires and a reader of the bus check it;
        in distributed mode, the message that will carry it must fit the bus (its headers come on
        top), or the relay could never publish it."""
        if self.keys is None and self.bus_room is None:
            return  # nothing to add to what encode measured (it runs for every event appended)
        size, relayed, what = len(envelope.data), envelope, f"payload of {envelope.type}"
        if self.keys is not None and envelope.datacontenttype != SEALED:
            size = self.keys.sealed_size(stream, envelope)
            what = f"sealed payload of {envelope.type}"
            check_size(size, self.max_size, what)
            relayed = msgspec.structs.replace(envelope, datacontenttype=SEALED)
        if self.bus_room is not None:
            room = self.bus_room(stream, relayed, size)
            if size > room:
                raise PayloadTooLarge(
                    f"{what} of {size:,} bytes does not fit a message of the bus, which carries at "
                    f"most {max(room, 0):,} bytes of this event's data (the server's max_payload less "
                    "the event's headers)"
                )

    def decode(self, envelope: Envelope, stream: str | None = None, version: int | None = None) -> Event:
        """Decode an envelope's data into its event class, upcast to the current version.

        Sealed data is opened first; ``stream`` and ``version``, where the event was read from,
        must be where it was sealed for. A shredded event decodes as ``Erased``."""
        # The common case first, on the hot path of every read: current version, JSON. The depth
        # is not measured again here: what the bus delivers was measured as it was read
        # (from_binary), what is stored was measured as it was written, and data deeper than the
        # stack allows (a row from before the limit) still ends as a MalformedEvent below.
        fast = self._fast.get(envelope.type)
        if (
            fast is not None
            and self.plaintext_ok
            and envelope.schemaversion == fast[1]
            and envelope.datacontenttype == JSON
            and len(envelope.data) <= self.max_size
        ):
            try:
                event: Event = fast[0].decode(envelope.data)
            except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise _malformed(envelope, exc, fast[2]) from None
            return event
        if envelope.datacontenttype == SEALED:
            opened = self._open(envelope, stream, version)
            if isinstance(opened, Erasure):
                return Erased(erased_type=envelope.type)
            envelope = opened
        elif not self.plaintext_ok:
            raise Undecryptable(
                f"event {envelope.id} ({envelope.type}) is stored in the clear, but this App reads "
                "only sealed data: it was written without encryption, or behind tidings' back "
                "(Encryption(accept_plaintext=True) reads events from before encryption was on)"
            )
        return self._decode(envelope)

    def _open(self, envelope: Envelope, stream: str | None, version: int | None) -> Envelope | Erasure:
        if self.keys is None:
            raise Undecryptable(
                f"event {envelope.id} ({envelope.type}) is encrypted and this App has no master key "
                f"(set {ENV_KEY} or {ENV_KEY_FILE}, or pass encryption=)"
            )
        return self.keys.open_event(envelope, stream, version)

    def stored(self, record: RecordedEvent) -> Stored[Event]:
        """A recorded envelope with its event decoded: what applications read."""
        return Stored(
            event=self.decode(record.envelope, record.stream, record.version),
            envelope=record.envelope,
            stream=record.stream,
            version=record.version,
            position=record.position,
        )

    def _decode(self, envelope: Envelope) -> Event:
        cls = self.registry.resolve(envelope.type)
        check_size(envelope.data, self.max_size, f"payload of {envelope.type}")
        if envelope.datacontenttype == JSON:
            check_depth(envelope.data, f"event {envelope.id} ({envelope.type}): data")
        stored = envelope.schemaversion
        current = cls.__event_version__
        if stored == current and envelope.datacontenttype == JSON:
            decoder = self._decoder_for(cls)
            self._fast[envelope.type] = (decoder, current, cls)
            with _Decoding(envelope, cls):
                event: Event = decoder.decode(envelope.data)
            return event
        if stored > current:
            raise UnknownEventType(
                f"event {envelope.id} of type {envelope.type!r} has schema version {stored}, "
                f"newer than this code's version {current}; deploy the newer event class"
            )
        with _Decoding(envelope):
            fields = self._decode_untyped(envelope)
        if not isinstance(fields, dict):
            # The type, never the value: error texts reach logs and dead letters, data must not.
            raise MalformedEvent(f"event {envelope.id}: data must be an object, got {kind_of(fields)}")
        for version in range(stored, current):
            upcaster = cls.__event_upcasters__.get(version)
            if upcaster is None:
                raise MalformedEvent(
                    f"event {envelope.id}: {cls.__name__} has no upcaster from version {version}"
                )
            try:
                fields = upcaster(fields)
            except Exception as exc:
                raise MalformedEvent(
                    f"event {envelope.id}: upcaster {upcaster.__name__} of {cls.__name__} "
                    f"(version {version} to {version + 1}) failed: {describe(exc)}"
                ) from exc
            if not isinstance(fields, dict):
                raise MalformedEvent(
                    f"event {envelope.id}: upcaster {upcaster.__name__} returned "
                    f"{type(fields).__name__}, not a dict"
                )
        with _Decoding(envelope, cls, fields):
            upcast: Event = msgspec.convert(fields, cls)
        return upcast

    def _has_floats(self, cls: type[Event]) -> bool:
        known = self._float_classes.get(cls)
        if known is None:
            hints = typing.get_type_hints(cls)
            known = self._float_classes[cls] = any("float" in repr(hint) for hint in hints.values())
        return known

    def _check_finite(self, event: Event, data: bytes) -> None:
        """JSON has no NaN or infinity: msgspec writes them as null, which would store an event
        that can never be read back. Refuse it at the door instead."""
        try:
            self._decoder_for(type(event)).decode(data)
        except msgspec.ValidationError:
            raise MalformedEvent(
                f"cannot encode {event.__event_type__}: a float is NaN or infinite, which JSON cannot carry"
            ) from None

    def _decoder_for(self, cls: type[Event]) -> msgspec.json.Decoder[Any]:
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = msgspec.json.Decoder(cls)
        return decoder

    def _decode_untyped(self, envelope: Envelope) -> Any:
        if envelope.datacontenttype == JSON:
            check_depth(envelope.data, f"event {envelope.id} ({envelope.type}): data")
            return msgspec.json.decode(envelope.data)
        if envelope.datacontenttype == MSGPACK:
            check_msgpack_depth(envelope.data, f"event {envelope.id} ({envelope.type}): data")
            return msgspec.msgpack.decode(envelope.data)
        raise MalformedEvent(f"event {envelope.id}: unsupported datacontenttype {envelope.datacontenttype!r}")

    def decode_fields(self, envelope: Envelope) -> Mapping[str, Any]:
        """The data as plain fields, for tools that show events without their classes."""
        if envelope.datacontenttype == SEALED:
            opened = self._open(envelope, None, None)
            if isinstance(opened, Erasure):
                return {"erased": True}
            envelope = opened
        with _Decoding(envelope):
            value = self._decode_untyped(envelope)
        return value if isinstance(value, dict) else {"value": value}


# The data of a typed decode that failed has not been read into fields: it is read again to say why.
_UNREAD: Final = object()


def _malformed(
    envelope: Envelope, exc: BaseException, cls: type[Event] | None = None, fields: object = _UNREAD
) -> MalformedEvent:
    """The error for data that failed to decode, naming what is wrong in tidings' words."""
    what = f"event {envelope.id} ({envelope.type})"
    if isinstance(exc, msgspec.ValidationError):
        if cls is None:
            reason = f"data does not fit its schema ({decoder_detail(exc)})"
        elif fields is _UNREAD:  # a typed decode reads JSON only
            reason = json_problem(exc, envelope.data, cls, whole="data", member="field")
        else:
            reason = value_problem(exc, fields, cls, whole="data", member="field")
        return MalformedEvent(f"{what}: invalid data: {reason}")
    if isinstance(exc, (UnicodeDecodeError, msgspec.DecodeError)) and (
        problem := utf8_problem(envelope.data)
    ):
        return MalformedEvent(f"{what}: data is {problem}")
    if isinstance(exc, RecursionError):  # the stack ran out before the limit was reached
        return MalformedEvent(too_deep(f"{what}: data"))
    return MalformedEvent(f"{what}: data is malformed: {decoder_detail(exc)}")


class _Decoding:
    """Turns every decoder failure inside its block into a ``MalformedEvent`` that names it."""

    __slots__ = ("_cls", "_envelope", "_fields")

    def __init__(self, envelope: Envelope, cls: type[Event] | None = None, fields: object = _UNREAD) -> None:
        self._envelope = envelope
        self._cls = cls  # the class the data is decoded as, if any
        self._fields = fields  # the data already read as fields, if it was

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        if isinstance(
            exc, (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError)
        ):
            raise _malformed(self._envelope, exc, self._cls, self._fields) from None
