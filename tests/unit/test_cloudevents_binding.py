"""The CloudEvents rules that other producers rely on: binary mode as the NATS protocol binding
defines it, structured mode told apart by Content-Type, events without tidings' `topic` or
without `time`, `application/json` with parameters, and extensions kept and written out again."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import msgspec
import pytest

from tidings.domain.attributes import JSON, MAX_EXTENSIONS, RESERVED_NAMES
from tidings.domain.binary import from_binary, from_message, to_binary
from tidings.domain.envelope import (
    _STRUCTURED_MEMBERS,
    Envelope,
    from_structured,
    to_structured,
    validate_envelope,
)
from tidings.domain.events import Event, EventRegistry
from tidings.errors import MalformedEvent
from tidings.runtime.codec import Codec

RECEIVED = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


class Shipped(Event, topic="binding.order.shipped", type="com.example.binding.shipped"):
    order: str


registry = EventRegistry()
registry.register(Shipped)


def sample(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "id": "e-1",
        "source": "/orders",
        "type": "com.example.binding.shipped",
        "topic": "binding.order.shipped",
        "time": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "data": b'{"order":"o-1"}',
    }
    fields.update(changes)
    return msgspec.convert(fields, Envelope)


def foreign_headers(**changes: str | None) -> dict[str, str]:
    """Binary-mode headers as another producer following the NATS binding writes them."""
    fields: dict[str, str | None] = {
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "/orders",
        "ce-type": "com.example.binding.shipped",
        "ce-time": "2024-05-06T07:08:09Z",
        "ce-datacontenttype": JSON,
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def foreign_document(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/orders",
        "type": "com.example.binding.shipped",
        "time": "2024-05-06T07:08:09Z",
        "data": {"order": "o-1"},
    }
    fields.update(changes)
    return fields


def structured(fields: dict[str, object]) -> bytes:
    return json.dumps(fields).encode()


# --- binary mode as the NATS binding says -------------------------------------------------------


def test_values_are_percent_encoded_and_datacontenttype_is_a_ce_header() -> None:
    envelope = sample(subject="order%2042 \u00e9t\u00e9", extensions={"tenant": "caf\u00e9 %"})
    headers, body = to_binary(envelope)
    assert headers["ce-subject"] == "order%252042%20%C3%A9t%C3%A9"
    assert headers["ce-tenant"] == "caf%C3%A9%20%25"
    assert headers["ce-datacontenttype"] == JSON
    assert "content-type" not in {k.lower() for k in headers}
    assert from_binary(headers, body) == envelope


def test_ce_datacontenttype_counts_and_content_type_is_only_a_fallback() -> None:
    octets = foreign_headers(**{"ce-datacontenttype": "application/octet-stream", "Content-Type": JSON})
    assert from_binary(octets, b"\xff", topic_of=registry.topic_of).datacontenttype == (
        "application/octet-stream"
    )
    http_style = foreign_headers(**{"ce-datacontenttype": None, "Content-Type": "application/msgpack"})
    assert from_binary(http_style, b"\x80", topic_of=registry.topic_of).datacontenttype == (
        "application/msgpack"
    )
    neither = foreign_headers(**{"ce-datacontenttype": None})
    assert from_binary(neither, b"{}", topic_of=registry.topic_of).datacontenttype == JSON


def test_every_header_name_counts_in_any_case() -> None:
    headers, body = to_binary(sample(subject="s", extensions={"tenant": "t"}))
    shouted = {name.upper(): value for name, value in headers.items()}
    mixed = {name.title(): value for name, value in headers.items()}
    assert from_binary(shouted, body) == from_binary(mixed, body) == from_binary(headers, body)
    with pytest.raises(MalformedEvent, match="given twice"):
        from_binary({**headers, "CE-SUBJECT": "other"}, body)


def test_a_value_that_is_no_percent_encoding_is_refused() -> None:
    for bad in ("100%", "%C0%A0", '"unclosed'):
        with pytest.raises(MalformedEvent, match="header 'ce-subject'"):
            from_binary(foreign_headers(**{"ce-subject": bad}), b"{}", topic_of=registry.topic_of)


def test_messages_of_tidings_before_the_binding_decode_as_written() -> None:
    """Old tidings wrote Content-Type and raw values: read with ``legacy``, a '%' stays a '%'."""
    old = {
        "content-type": JSON,
        "ce-specversion": "1.0",
        "ce-id": "e-1",
        "ce-source": "svc",
        "ce-type": "com.example.binding.shipped",
        "ce-topic": "binding.order.shipped",
        "ce-time": "2024-05-06T07:08:09.123456Z",
        "ce-subject": "order%2042 \u00e9",
    }
    envelope = from_binary(old, b"{}", legacy=True)
    assert envelope.subject == "order%2042 \u00e9" and envelope.datacontenttype == JSON


# --- content modes on NATS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON; charset=UTF-8",
        "application/cloudevents",
    ],
)
def test_structured_mode_is_told_by_content_type(content_type: str) -> None:
    body = structured(foreign_document(topic="binding.order.shipped"))
    envelope = from_message({"Content-Type": content_type}, body)
    assert envelope.id == "e-1" and envelope.data == b'{"order": "o-1"}'


def test_batches_and_other_event_formats_are_refused() -> None:
    for content_type in ("application/cloudevents-batch+json", "application/cloudevents+avro"):
        with pytest.raises(MalformedEvent, match="only the JSON event format"):
            from_message({"content-type": content_type}, b"[]")


def test_any_other_content_type_is_binary_mode() -> None:
    envelope = from_message(foreign_headers(), b'{"order":"o-1"}', topic_of=registry.topic_of)
    assert envelope.type == "com.example.binding.shipped"


# --- events of other producers ------------------------------------------------------------------


def test_without_topic_an_event_gets_its_registered_type_s() -> None:
    binary = from_binary(foreign_headers(), b"{}", topic_of=registry.topic_of)
    document = from_structured(structured(foreign_document()), topic_of=registry.topic_of)
    assert binary.topic == document.topic == "binding.order.shipped"
    given = from_binary(foreign_headers(**{"ce-topic": "binding.other"}), b"{}", topic_of=registry.topic_of)
    assert given.topic == "binding.other"  # a topic it carries is its own (the bus checks the subject)
    with pytest.raises(
        MalformedEvent, match=re.escape("no topic, and its type 'com.example.unknown' is not registered")
    ):
        from_binary(foreign_headers(**{"ce-type": "com.example.unknown"}), b"{}", topic_of=registry.topic_of)


def test_without_time_an_event_gets_the_time_it_was_received() -> None:
    binary = from_binary(
        foreign_headers(**{"ce-time": None}), b"{}", topic_of=registry.topic_of, received=RECEIVED
    )
    document = from_structured(
        structured(foreign_document(time=None)), topic_of=registry.topic_of, received=RECEIVED
    )
    assert binary.time == document.time == RECEIVED
    timed = from_binary(foreign_headers(), b"{}", topic_of=registry.topic_of, received=RECEIVED)
    assert timed.time == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"']
)
def test_json_with_parameters_is_json(content_type: str) -> None:
    codec = Codec(source="test", registry=registry)
    binary = from_binary(
        foreign_headers(**{"ce-datacontenttype": content_type}),
        b'{"order":"o-1"}',
        topic_of=registry.topic_of,
    )
    document = from_structured(
        structured(foreign_document(datacontenttype=content_type)), topic_of=registry.topic_of
    )
    assert binary.datacontenttype == document.datacontenttype == JSON
    assert codec.decode(binary) == codec.decode(document) == Shipped(order="o-1")


def test_json_in_another_charset_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="JSON data must be UTF-8"):
        from_binary(foreign_headers(**{"ce-datacontenttype": "application/json; charset=latin-1"}), b"{}")


def test_data_of_a_text_type_is_the_string_s_content() -> None:
    document = structured(foreign_document(datacontenttype="text/plain", data="h\u00e9llo"))
    envelope = from_structured(document, topic_of=registry.topic_of)
    assert envelope.data == "h\u00e9llo".encode()
    with pytest.raises(MalformedEvent, match="must be a JSON string"):
        from_structured(structured(foreign_document(datacontenttype="text/plain", data=5)))


# --- extensions ---------------------------------------------------------------------------------


def test_extensions_are_kept_and_written_out_again_in_both_forms() -> None:
    document = structured(
        foreign_document(comexampleext="v %\u00e9", sampledrate=5, flagged=True, unsetext=None)
    )
    envelope = from_structured(document, topic_of=registry.topic_of)
    assert envelope.extensions == {"comexampleext": "v %\u00e9", "sampledrate": 5, "flagged": True}
    again = json.loads(to_structured(envelope))
    assert {k: again[k] for k in envelope.extensions} == envelope.extensions
    headers, body = to_binary(envelope)
    assert headers["ce-sampledrate"] == "5" and headers["ce-flagged"] == "true"
    assert from_binary(headers, body).extensions == {
        "comexampleext": "v %\u00e9",
        "sampledrate": "5",  # binary mode carries strings: the type is the structured form's
        "flagged": "true",
    }


@pytest.mark.parametrize(
    ("name", "problem"), [("MyExt", "not valid"), ("my_ext", "not valid"), ("x" * 65, "not valid")]
)
def test_extension_names_follow_the_spec(name: str, problem: str) -> None:
    with pytest.raises(MalformedEvent, match=problem):
        from_structured(structured(foreign_document(**{name: "v"})), topic_of=registry.topic_of)
    assert from_structured(structured(foreign_document(**{"x" * 64: "v"})), topic_of=registry.topic_of)


@pytest.mark.parametrize(
    ("name", "problem"), [("my_ext", "not valid"), ("x" * 65, "not valid"), ("data", "own")]
)
def test_extension_header_names_follow_the_spec(name: str, problem: str) -> None:
    # Header names count in any case: ce-MyExt is the extension myext.
    with pytest.raises(MalformedEvent, match=problem):
        from_binary(foreign_headers(**{f"ce-{name}": "v"}), b"{}", topic_of=registry.topic_of)
    envelope = from_binary(foreign_headers(**{"ce-MyExt": "v"}), b"{}", topic_of=registry.topic_of)
    assert envelope.extensions == {"myext": "v"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (1.5, "must be a string, a 32-bit integer or a boolean"),
        (2**31, "must be a string, a 32-bit integer or a boolean"),
        ({"a": 1}, "must be a string, a 32-bit integer or a boolean"),
        (["a"], "must be a string, a 32-bit integer or a boolean"),
        ("x" * 4097, "must be a string, a 32-bit integer or a boolean"),
        ("line\nbreak", "control character"),
    ],
)
def test_extension_values_are_bounded(value: object, problem: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(problem)):
        from_structured(structured(foreign_document(ext=value)), topic_of=registry.topic_of)


def test_extensions_are_bounded_in_number() -> None:
    many = {f"ext{n}": "v" for n in range(MAX_EXTENSIONS + 1)}
    with pytest.raises(MalformedEvent, match=f"at most {MAX_EXTENSIONS}|may carry {MAX_EXTENSIONS}"):
        from_structured(structured(foreign_document(**many)), topic_of=registry.topic_of)
    headers = foreign_headers(**{f"ce-{name}": value for name, value in many.items()})
    with pytest.raises(MalformedEvent, match=f"may carry {MAX_EXTENSIONS}"):
        from_binary(headers, b"{}", topic_of=registry.topic_of)
    with pytest.raises(MalformedEvent, match="control character"):
        from_binary(foreign_headers(**{"ce-ext": "line%0Abreak"}), b"{}", topic_of=registry.topic_of)


def test_envelopes_built_in_code_are_held_to_the_same_rules() -> None:
    assert validate_envelope(sample(extensions={"tenant": "t", "n": 1, "b": False}))
    for extensions in ({"topic": "x"}, {"Bad": "x"}, {"ext": 1.5}, {"ext": "a\x00"}):
        with pytest.raises(MalformedEvent):
            validate_envelope(Envelope(**{**msgspec.structs.asdict(sample()), "extensions": extensions}))


def test_no_extension_can_take_the_place_of_a_member_of_the_structured_form() -> None:
    assert _STRUCTURED_MEMBERS <= RESERVED_NAMES
    with pytest.raises(MalformedEvent, match="attribute of its own"):
        to_structured(Envelope(**{**msgspec.structs.asdict(sample()), "extensions": {"type": "forged"}}))
