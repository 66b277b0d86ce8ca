"""The envelope's two wire forms: exact round trips, and decoders that fail only with MalformedEvent."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tidings.domain.attributes import RESERVED_NAMES, canonical_string
from tidings.domain.binary import from_binary, to_binary
from tidings.domain.envelope import (
    DEFAULT_MAX_SIZE,
    JSON,
    MSGPACK,
    Envelope,
    format_time,
    from_structured,
    to_structured,
)
from tidings.domain.headers import percent_encode
from tidings.domain.ids import uuid7
from tidings.domain.topics import validate_topic
from tidings.errors import InvalidTopic, MalformedEvent, PayloadTooLarge

FAST = settings(max_examples=60, deadline=None, database=None)
FUZZ = settings(max_examples=120, deadline=None, database=None)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
OPTIONAL_TEXT = ("subject", "dataschema", "traceparent", "tracestate", "partitionkey")
OPTIONAL_IDS = ("correlationid", "causationid")
HEADER_NAMES = (
    "id",
    "source",
    "type",
    "topic",
    "time",
    "subject",
    "specversion",
    "dataschema",
    "schemaversion",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
    "expirytime",
    "partitionkey",
)

# --- strategies ---------------------------------------------------------------------------------

# CloudEvents strings hold no control characters (tests/unit/test_hostile_input.py refuses them).
NO_CONTROL = st.characters(exclude_categories=("Cc", "Cs"))

texts = st.one_of(
    st.text(alphabet=NO_CONTROL, min_size=1, max_size=30),
    st.sampled_from(["x" * 4096, "é" * 4096, " ", "null", "1"]),
)
ids = st.one_of(st.text(alphabet=NO_CONTROL, min_size=1, max_size=30), st.builds(uuid7), st.just("i" * 256))
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=10)
topics = st.lists(tokens, min_size=1, max_size=5).map(".".join)
# Any offset, down to seconds (historic zones such as Amsterdam's +00:19:32 have them): both wire
# forms write times in UTC, so the instant survives whatever the offset.
offsets: st.SearchStrategy[tzinfo] = st.one_of(
    st.just(UTC),
    st.integers(-86399, 86399).map(lambda seconds: timezone(timedelta(seconds=seconds))),
    st.sampled_from([timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-9, minutes=-30))]),
)
# Years 2..9998 keep every instant representable in UTC whatever the offset (see the report on
# to_binary for the extreme years).
times = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_bytes(draw: st.DrawFn) -> bytes:
    """A valid JSON document in one of several layouts, without leading or trailing whitespace."""
    value = draw(json_values)
    style = draw(st.sampled_from(["msgspec", "compact", "spaced", "indented", "unicode"]))
    if style == "msgspec":
        return msgspec.json.encode(value)
    if style == "compact":
        return json.dumps(value, separators=(",", ":")).encode()
    if style == "spaced":
        return json.dumps(value).encode()
    if style == "indented":
        return json.dumps(value, indent=2).encode()
    return json.dumps(value, ensure_ascii=False).encode()


extension_names = st.from_regex(r"[a-z0-9]{1,64}", fullmatch=True).filter(lambda n: n not in RESERVED_NAMES)
extension_values: st.SearchStrategy[str | int | bool] = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=30),
    st.integers(-(2**31), 2**31 - 1),
    st.booleans(),
)
extension_sets = st.dictionaries(extension_names, extension_values, max_size=4)


def as_binary_carries_it(envelope: Envelope) -> Envelope:
    """The envelope as binary mode gives it back: every extension value a string."""
    strings = {name: canonical_string(value) for name, value in envelope.extensions.items()}
    return msgspec.structs.replace(envelope, extensions=strings)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    content_type = draw(st.sampled_from([JSON, JSON, MSGPACK, "application/octet-stream"]))
    if content_type == JSON:
        data = draw(st.one_of(json_bytes(), st.just(b"")))
    else:
        data = draw(st.binary(max_size=200))
    optional: dict[str, Any] = {}
    for name in OPTIONAL_TEXT:
        optional[name] = draw(st.none() | texts)
    for name in OPTIONAL_IDS:
        optional[name] = draw(st.none() | ids)
    return Envelope(
        id=draw(ids),
        source=draw(texts),
        type=draw(texts),
        topic=draw(topics),
        time=draw(times),
        data=data,
        datacontenttype=content_type,
        schemaversion=draw(st.integers(1, 1_000_000)),
        expirytime=draw(st.none() | times),
        extensions=draw(extension_sets),
        **optional,
    )


def sample_envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": "0190a0a0-0000-7000-8000-000000000001",
        "source": "test",
        "type": "OrderPlaced",
        "topic": "order.placed",
        "time": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        "data": b'{"order_id":"o-1","total":42}',
    }
    fields.update(changes)
    return Envelope(**fields)


MISSING = object()


def document(**changes: object) -> bytes:
    """A valid structured document with some attributes replaced (or removed with MISSING)."""
    fields: dict[str, object] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "test",
        "type": "OrderPlaced",
        "topic": "order.placed",
        "time": "2024-05-06T07:08:09.123456+05:30",
        "data": {"order_id": "o-1"},
    }
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not MISSING}).encode()


def document_with_raw(name: str, raw: bytes) -> bytes:
    """A valid document whose attribute ``name`` is the raw JSON text ``raw``."""
    base = document(**{name: MISSING})
    return base[:-1] + b', "' + name.encode() + b'": ' + raw + b"}"


def headers(**changes: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "ce-datacontenttype": JSON,
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "test",
        "ce-type": "OrderPlaced",
        "ce-topic": "order.placed",
        "ce-time": "2024-05-06T01:38:09.123456Z",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def assert_well_formed(envelope: Envelope) -> None:
    """What every envelope that a decoder hands out must satisfy."""
    assert isinstance(envelope, Envelope)
    assert envelope.specversion == "1.0"
    assert validate_topic(envelope.topic) == envelope.topic
    assert envelope.time.utcoffset() is not None
    assert envelope.expirytime is None or envelope.expirytime.utcoffset() is not None
    assert 1 <= envelope.schemaversion <= 1_000_000
    assert 1 <= len(envelope.id) <= 256
    assert 1 <= len(envelope.source) <= 4096
    assert 1 <= len(envelope.type) <= 4096
    assert isinstance(envelope.data, bytes)


# --- round trips --------------------------------------------------------------------------------


@FAST
@given(envelopes())
def test_structured_round_trip_is_exact(envelope: Envelope) -> None:
    document_bytes = to_structured(envelope)
    back = from_structured(document_bytes)
    # Every attribute comes back equal; times compare as instants...
    assert back == envelope
    assert back.data == envelope.data
    assert back.time == envelope.time
    assert back.expirytime == envelope.expirytime
    # ...come back in UTC (an offset of seconds would not survive RFC 3339) with microseconds.
    assert back.time.utcoffset() == timedelta(0)
    assert back.time.microsecond == envelope.time.astimezone(UTC).microsecond
    if envelope.expirytime is not None:
        assert back.expirytime is not None
        assert back.expirytime.utcoffset() == timedelta(0)
    # Encoding what was decoded gives the same bytes again.
    assert to_structured(back) == document_bytes
    assert_well_formed(back)


@FAST
@given(envelopes())
def test_structured_form_inlines_json_and_base64s_everything_else(envelope: Envelope) -> None:
    parsed = json.loads(to_structured(envelope))
    assert parsed["specversion"] == "1.0"
    assert parsed["topic"] == envelope.topic
    assert datetime.fromisoformat(parsed["time"]) == envelope.time
    if envelope.datacontenttype == JSON:
        event("inline" if envelope.data else "empty json")
        assert "data_base64" not in parsed
        if envelope.data:
            assert parsed["data"] == json.loads(envelope.data)
        else:
            assert "data" not in parsed
    else:
        event("base64")
        assert "data" not in parsed
        assert base64.b64decode(parsed["data_base64"], validate=True) == envelope.data
        assert parsed["datacontenttype"] == envelope.datacontenttype


@FAST
@given(envelopes())
def test_binary_round_trip_is_exact_but_times_come_back_in_utc(envelope: Envelope) -> None:
    headers_out, body = to_binary(envelope)
    assert body == envelope.data
    # The NATS binding: printable ASCII values, datacontenttype as a ce- header like the rest.
    assert all(isinstance(v, str) and re.fullmatch(r"[!#-~]*", v) for v in headers_out.values())
    assert "content-type" not in headers_out
    assert headers_out["ce-datacontenttype"] == envelope.datacontenttype
    assert headers_out["ce-time"] == format_time(envelope.time)
    assert headers_out["ce-time"].endswith("Z")
    back = from_binary(headers_out, body)
    assert back == as_binary_carries_it(envelope)
    assert back.time == envelope.time
    assert back.time.utcoffset() == timedelta(0)
    assert back.time.microsecond == envelope.time.astimezone(UTC).microsecond
    assert back.expirytime == envelope.expirytime
    if back.expirytime is not None:
        assert back.expirytime.utcoffset() == timedelta(0)
    assert to_binary(back) == (headers_out, body)
    assert_well_formed(back)


@FAST
@given(envelopes())
def test_binary_header_names_are_case_insensitive(envelope: Envelope) -> None:
    headers_out, body = to_binary(envelope)
    shouted = {(k.upper() if k != "ce-id" else "Ce-Id"): v for k, v in headers_out.items()}
    assert from_binary(shouted, body) == as_binary_carries_it(envelope)


@FAST
@given(envelopes())
def test_structured_and_binary_agree(envelope: Envelope) -> None:
    via_structured = from_structured(to_structured(envelope))
    via_binary = from_binary(*to_binary(envelope))
    assert as_binary_carries_it(via_structured) == via_binary


def test_both_wire_forms_write_time_in_utc() -> None:
    envelope = sample_envelope()
    assert b'"time":"2024-05-06T01:38:09.123456Z"' in to_structured(envelope)
    headers_out, _ = to_binary(envelope)
    assert headers_out["ce-time"] == "2024-05-06T01:38:09.123456Z"


def test_defaults_are_omitted_from_the_structured_form() -> None:
    parsed = json.loads(to_structured(sample_envelope()))
    assert set(parsed) == {"specversion", "id", "source", "type", "topic", "time", "data"}


def test_json_data_loses_only_surrounding_whitespace() -> None:
    envelope = sample_envelope(data=b" \n[1,  2,\n 3] \t\n")
    assert from_structured(to_structured(envelope)).data == b"[1,  2,\n 3]"


def test_empty_data_round_trips_in_both_content_types() -> None:
    for content_type in (JSON, MSGPACK):
        envelope = sample_envelope(data=b"", datacontenttype=content_type)
        assert from_structured(to_structured(envelope)) == envelope
        assert from_binary(*to_binary(envelope)) == envelope


def test_structured_round_trip_of_numbers_in_data_is_opaque() -> None:
    # The envelope does not parse its data: out-of-range numbers pass (the codec rejects them).
    for raw in (b"1e400", b"9" * 5000, b"-0.0", b"[1e400]"):
        envelope = sample_envelope(data=raw)
        assert from_structured(to_structured(envelope)).data == raw


# --- fuzzing the decoders -----------------------------------------------------------------------


def note_rejection(exc: MalformedEvent) -> None:
    assert str(exc), "a MalformedEvent must say what is wrong"
    event(f"rejected: {type(exc).__name__}")


def decode_structured_or_malformed(blob: bytes, max_size: int = DEFAULT_MAX_SIZE) -> Envelope | None:
    try:
        envelope = from_structured(blob, max_size=max_size)
    except MalformedEvent as exc:
        note_rejection(exc)
        return None
    event("accepted")
    assert_well_formed(envelope)
    to_structured(envelope)  # whatever was accepted can be encoded again
    return envelope


def decode_binary_or_malformed(headers_in: dict[str, str], body: bytes) -> Envelope | None:
    try:
        envelope = from_binary(headers_in, body)
    except MalformedEvent as exc:
        note_rejection(exc)
        return None
    event("accepted")
    assert_well_formed(envelope)
    assert envelope.data == body
    return envelope


@FUZZ
@given(st.binary(max_size=400))
def test_from_structured_on_arbitrary_bytes(blob: bytes) -> None:
    decode_structured_or_malformed(blob)


@FUZZ
@given(st.text(alphabet=st.sampled_from(list('{}[]",:0123456789.eE-+ truefalsn\\u"\xff')), max_size=200))
def test_from_structured_on_json_like_text(text: str) -> None:
    decode_structured_or_malformed(text.encode("utf-8", "surrogatepass"))


attribute_names = st.sampled_from([*HEADER_NAMES, "datacontenttype", "data", "data_base64", "extra"])
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "delete", "insert", "truncate", "repeat"]),
        st.floats(0, 1),
        st.binary(min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=4,
)


def mutate(blob: bytes, steps: list[tuple[str, float, bytes]]) -> bytes:
    for op, where, payload in steps:
        at = min(int(where * len(blob)), max(len(blob) - 1, 0))
        if op == "flip" and blob:
            blob = blob[:at] + bytes([blob[at] ^ payload[0]]) + blob[at + 1 :]
        elif op == "delete":
            blob = blob[:at] + blob[at + len(payload) :]
        elif op == "insert":
            blob = blob[:at] + payload + blob[at:]
        elif op == "truncate":
            blob = blob[:at]
        elif op == "repeat":
            blob = blob[:at] + blob[at : at + 8] * 3 + blob[at:]
    return blob


@FUZZ
@given(envelopes(), mutations)
def test_from_structured_on_byte_mutated_documents(
    envelope: Envelope, steps: list[tuple[str, float, bytes]]
) -> None:
    decode_structured_or_malformed(mutate(to_structured(envelope), steps))


@FUZZ
@given(
    envelopes(),
    st.lists(
        st.tuples(attribute_names, st.one_of(st.just(MISSING), json_values, st.just("1.0"), topics, ids)),
        min_size=1,
        max_size=3,
    ),
)
def test_from_structured_on_attribute_mutated_documents(
    envelope: Envelope, changes: list[tuple[str, object]]
) -> None:
    parsed = json.loads(to_structured(envelope))
    for name, value in changes:
        if value is MISSING:
            parsed.pop(name, None)
        else:
            parsed[name] = value
    decode_structured_or_malformed(json.dumps(parsed).encode())


@FAST
@given(st.text(max_size=60) | topics | topics.map(lambda t: t + ".*") | topics.map(lambda t: t + "\n"))
def test_topic_attribute_follows_the_topic_grammar(topic: str) -> None:
    # In a header the topic travels percent-encoded, as a producer sends it: a raw '%' or a
    # leading '"' is the header syntax's business (test_headers), not the topic grammar's.
    header = percent_encode(topic)
    try:
        validate_topic(topic)
    except InvalidTopic:
        event("invalid topic")
        with pytest.raises(MalformedEvent, match="attribute 'topic' has a wrong type or value"):
            from_structured(document(topic=topic))
        with pytest.raises(MalformedEvent, match="invalid envelope headers: attribute 'topic' has a wrong"):
            from_binary(headers(**{"ce-topic": header}), b"{}")
    else:
        event("valid topic")
        assert from_structured(document(topic=topic)).topic == topic
        assert from_binary(headers(**{"ce-topic": header}), b"{}").topic == topic


header_keys = st.one_of(
    st.sampled_from([f"ce-{name}" for name in HEADER_NAMES]),
    st.sampled_from(["content-type", "Content-Type", "CE-ID", "ce-data", "ce-datacontenttype"]),
    st.text(max_size=12),
)
header_values = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=10),  # surrogates included
    st.sampled_from(
        ["1.0", "1", "0", "-1", "1e400", "9" * 5000, "nan", "true", "null", "", "2024-01-01T00:00:00"]
    ),
    st.sampled_from(["a.b", "a..b", "a.*", "a.b\n", "1700000000", "2024-01-01T00:00:00+01:00"]),
    times.map(format_time),
)


@FUZZ
@given(st.dictionaries(header_keys, header_values, max_size=20), st.binary(max_size=100))
def test_from_binary_on_arbitrary_headers(headers_in: dict[str, str], body: bytes) -> None:
    decode_binary_or_malformed(headers_in, body)


@FUZZ
@given(
    envelopes(),
    st.lists(st.tuples(header_keys, st.none() | header_values), min_size=1, max_size=4),
    st.binary(max_size=100) | st.none(),
)
def test_from_binary_on_mutated_headers(
    envelope: Envelope, changes: list[tuple[str, str | None]], body: bytes | None
) -> None:
    headers_in, original_body = to_binary(envelope)
    for key, value in changes:
        if value is None:
            headers_in.pop(key, None)
        else:
            headers_in[key] = value
    decode_binary_or_malformed(headers_in, original_body if body is None else body)


# --- explicit examples: each names its problem --------------------------------------------------


@pytest.mark.parametrize("name", ["specversion", "id", "source", "type"])
def test_missing_attribute(name: str) -> None:
    with pytest.raises(MalformedEvent, match=f"invalid envelope: required attribute '{name}' is missing"):
        from_structured(document(**{name: MISSING}))


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_missing_binary_header(name: str) -> None:
    with pytest.raises(
        MalformedEvent, match=f"invalid envelope headers: required attribute '{name}' is missing"
    ):
        from_binary(headers(**{f"ce-{name}": None}), b"{}")


def test_missing_topic_or_time_without_a_way_to_derive_them() -> None:
    # Optional in CloudEvents, needed by tidings: the readers say how to fill them in
    # (test_cloudevents_binding.py); without that they are missing.
    with pytest.raises(MalformedEvent, match="e-1: no topic, and its type 'OrderPlaced' is not registered"):
        from_structured(document(topic=MISSING))
    with pytest.raises(MalformedEvent, match="e-1: no topic, and its type 'OrderPlaced' is not registered"):
        from_binary(headers(**{"ce-topic": None}), b"{}")
    with pytest.raises(MalformedEvent, match="e-1: no time"):
        from_structured(document(time=MISSING))
    with pytest.raises(MalformedEvent, match="e-1: no time"):
        from_binary(headers(**{"ce-time": None}), b"{}")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("id", 1),
        ("source", None),
        ("type", ["x"]),
        ("subject", {}),
        ("schemaversion", "1"),
        ("schemaversion", 1.5),
        ("schemaversion", 0),
        ("schemaversion", 1_000_001),
        ("time", "yesterday"),
        ("time", 1_700_000_000),
        ("id", ""),
        ("id", "i" * 257),
        ("source", "s" * 4097),
        ("data_base64", 5),
        ("datacontenttype", ""),
    ],
)
def test_mistyped_attribute(name: str, value: object) -> None:
    with pytest.raises(
        MalformedEvent, match=f"invalid envelope: attribute '{name}' has a wrong type or value"
    ):
        from_structured(document(**{name: value}))


def test_mistyped_binary_header() -> None:
    with pytest.raises(MalformedEvent, match="ce-schemaversion must be a whole number, got 'one'"):
        from_binary(headers(**{"ce-schemaversion": "one"}), b"{}")
    with pytest.raises(MalformedEvent, match="invalid envelope headers"):
        from_binary(headers(**{"ce-time": "yesterday"}), b"{}")


@pytest.mark.parametrize(
    "blob",
    [
        document(id="\u00e9").replace(b"\\u00e9", b"\xff"),
        b'{"specversion":"1.0","id":"\xc3\x28"}',
        b'{"specversion":"1.0","id":"e-1","source":"\xed\xa0\x80"}',  # an encoded surrogate
    ],
)
def test_bad_utf8(blob: bytes) -> None:
    # msgspec words it one way or another by version; tidings names the cause in its own words.
    with pytest.raises(MalformedEvent, match="envelope is not valid UTF-8 at byte"):
        from_structured(blob)


@pytest.mark.parametrize(
    "blob",
    [
        document_with_raw("data", b"[" * 100_000),
        document_with_raw("extension", b"[" * 100_000 + b"]" * 100_000),
        document_with_raw("extension", b'{"a":' * 100_000),
    ],
)
def test_deep_nesting(blob: bytes) -> None:
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        from_structured(blob)


def test_deep_nesting_at_the_top_is_not_an_object() -> None:
    with pytest.raises(MalformedEvent, match="invalid envelope: envelope must be an object, got array"):
        from_structured(b"[" * 100_000)


@pytest.mark.parametrize("name", ["schemaversion", "data", "subject"])
@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(name: str, raw: bytes) -> None:
    with pytest.raises(MalformedEvent, match="not valid JSON"):
        from_structured(document_with_raw(name, raw))


def test_huge_float() -> None:
    with pytest.raises(MalformedEvent, match="attribute 'schemaversion' has a wrong type or value"):
        from_structured(document_with_raw("schemaversion", b"1e400"))
    with pytest.raises(MalformedEvent, match="ce-schemaversion must be a whole number, got '1e400'"):
        from_binary(headers(**{"ce-schemaversion": "1e400"}), b"{}")


def test_huge_integer() -> None:
    digits = b"9" * 5000
    with pytest.raises(MalformedEvent, match="attribute 'schemaversion' has a wrong type or value"):
        from_structured(document_with_raw("schemaversion", digits))
    with pytest.raises(MalformedEvent, match="ce-schemaversion must be a whole number"):
        from_binary(headers(**{"ce-schemaversion": digits.decode()}), b"{}")
    # An extension holding one is refused: an Integer has 32 bits.
    with pytest.raises(MalformedEvent, match="extension 'extension' must be a string, a 32-bit integer"):
        from_structured(document_with_raw("extension", digits))


def pad_to(blob: bytes, size: int) -> bytes:
    assert blob.endswith(b"}")
    return blob[:-1] + b" " * (size - len(blob)) + b"}"


def test_oversized_envelope_default_limit() -> None:
    base = document()
    assert from_structured(pad_to(base, DEFAULT_MAX_SIZE)).id == "e-1"
    with pytest.raises(
        PayloadTooLarge, match=re.escape("envelope of 1,048,577 bytes exceeds the limit of 1,048,576")
    ):
        from_structured(pad_to(base, DEFAULT_MAX_SIZE + 1))
    big = sample_envelope(datacontenttype=MSGPACK, data=b"\0" * DEFAULT_MAX_SIZE)
    with pytest.raises(PayloadTooLarge, match=re.escape("envelope of")):
        from_structured(to_structured(big))


def test_oversized_envelope_custom_limit() -> None:
    blob = document()
    assert from_structured(blob, max_size=len(blob)).id == "e-1"
    with pytest.raises(
        PayloadTooLarge, match=re.escape(f"envelope of {len(blob):,} bytes exceeds the limit of 100 bytes")
    ):
        from_structured(blob, max_size=100)
    with pytest.raises(PayloadTooLarge) as caught:
        from_structured(blob, max_size=len(blob) - 1)
    assert isinstance(caught.value, MalformedEvent)


def test_oversized_binary_body() -> None:
    body = b'"' + b"x" * 98 + b'"'
    assert from_binary(headers(), body, max_size=100).data == body
    with pytest.raises(
        PayloadTooLarge, match=re.escape("payload of 101 bytes exceeds the limit of 100 bytes")
    ):
        from_binary(headers(), b" " * 101, max_size=100)
    with pytest.raises(PayloadTooLarge, match=re.escape("exceeds the limit of 1,048,576 bytes")):
        from_binary(headers(), b" " * (DEFAULT_MAX_SIZE + 1))


@pytest.mark.parametrize("version", ["0.3", "1", "1.0 ", "2.0"])
def test_bad_specversion(version: str) -> None:
    with pytest.raises(MalformedEvent, match="attribute 'specversion' has a wrong type or value"):
        from_structured(document(specversion=version))
    with pytest.raises(MalformedEvent, match=re.escape(f"unsupported CloudEvents specversion {version!r}")):
        from_binary(headers(**{"ce-specversion": version}), b"{}")


def test_bad_specversion_type_and_absence() -> None:
    with pytest.raises(MalformedEvent, match="attribute 'specversion' has a wrong type or value"):
        from_structured(document(specversion=1.0))
    with pytest.raises(MalformedEvent, match=re.escape("unsupported CloudEvents specversion None")):
        from_binary(headers(**{"ce-specversion": None}), b"{}")


@pytest.mark.parametrize("name", ["time", "expirytime"])
def test_naive_time(name: str) -> None:
    with pytest.raises(MalformedEvent, match=f"attribute '{name}' has a wrong type or value"):
        from_structured(document(**{name: "2024-05-06T07:08:09.123456"}))
    with pytest.raises(MalformedEvent, match="invalid envelope headers"):
        from_binary(headers(**{f"ce-{name}": "2024-05-06T07:08:09"}), b"{}")


@pytest.mark.parametrize("topic", ["a..b", "order.*", "order.>", "order.placed\n", "ordér", "a" * 256, ""])
def test_invalid_topic(topic: str) -> None:
    with pytest.raises(MalformedEvent, match="attribute 'topic' has a wrong type or value"):
        from_structured(document(topic=topic))
    with pytest.raises(MalformedEvent, match="invalid envelope headers"):
        from_binary(headers(**{"ce-topic": topic}), b"{}")


def test_data_and_data_base64_together() -> None:
    with pytest.raises(MalformedEvent, match="both 'data' and 'data_base64'"):
        from_structured(document(data_base64="AA=="))


@pytest.mark.parametrize("text", ["AA=", "A", "AA==\n", "-_8=", "é", "AA==AA=="])
def test_invalid_base64(text: str) -> None:
    with pytest.raises(MalformedEvent, match="'data_base64' is not valid base64"):
        from_structured(document(data=MISSING, datacontenttype=MSGPACK, data_base64=text))


@pytest.mark.parametrize(
    "blob", [b"", b"null", b"[]", b"42", b'"x"', b"{", b"{}", b"{} {}", b"\xef\xbb\xbf{}"]
)
def test_not_an_envelope(blob: bytes) -> None:
    with pytest.raises(MalformedEvent):
        from_structured(blob)
