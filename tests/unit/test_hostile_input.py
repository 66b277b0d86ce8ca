"""Input that anyone who can publish on the bus may send: every way in ends in a
``MalformedEvent`` (a dead letter), never in another exception that would stop a partition."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import sys
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.msg import Msg

from tidings.adapters.nats.reads import record_of
from tidings.adapters.tls_refusals import server_certificate_problem
from tidings.cli.logs import TextFormatter
from tidings.domain.binary import from_binary
from tidings.domain.envelope import Envelope, Undecodable, from_structured, validate_envelope
from tidings.domain.nesting import MAX_DEPTH
from tidings.errors import MalformedEvent, describe

BASE = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "s", "ce-type": "T", "ce-topic": "a.b"}
TIME = {"ce-time": "2026-01-01T00:00:00Z"}
DEEP = b"[" * 200_000
DEEP_BASE64 = base64.b64encode(DEEP).decode()
CE_JSON = {"Content-Type": "application/cloudevents+json"}


def structured(**members: object) -> bytes:
    document = {"specversion": "1.0", "id": "e-1", "source": "s", "type": "T", "topic": "a.b"}
    document["time"] = "2026-01-01T00:00:00Z"
    return json.dumps({**document, **members}).encode()


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "correlationid", "partitionkey"])
@pytest.mark.parametrize("character", ["%00", "%0A", "%1B", "%7F", "%C2%85"])
def test_a_control_character_in_a_binary_attribute_is_malformed(name: str, character: str) -> None:
    with pytest.raises(MalformedEvent, match=f"'{name}' holds a control character"):
        from_binary({**BASE, **TIME, f"ce-{name}": f"x{character}y"}, b"{}")


@pytest.mark.parametrize("name", ["id", "source", "type", "subject", "causationid"])
def test_a_control_character_in_a_structured_attribute_is_malformed(name: str) -> None:
    with pytest.raises(MalformedEvent, match=f"'{name}' holds a control character"):
        from_structured(structured(**{name: "evil\u0000id"}))


def test_an_envelope_built_in_code_with_a_control_character_is_refused() -> None:
    envelope = Envelope("e-1", "s", "T", "a.b", datetime.now(UTC), b"{}", subject="line\nbreak")
    with pytest.raises(MalformedEvent, match="'subject' holds a control character"):
        validate_envelope(envelope)


def test_deep_nesting_in_a_binary_body_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        from_binary({**BASE, **TIME}, DEEP)


def test_deep_nesting_in_data_base64_is_malformed() -> None:
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        from_structured(structured(data_base64=DEEP_BASE64))


def _packed(levels: int) -> bytes:
    """msgpack maps nested ``levels`` deep: msgspec decodes it whole, at the top of a stack."""
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return msgspec.msgpack.encode(value)


def test_msgpack_data_nests_no_deeper_than_json_at_every_door() -> None:
    """msgpack's decoder recurses as JSON's does: the same limit, refused in the same words,
    whether the data comes in a binary body, in data_base64 or in an envelope built in code."""
    msgpack = {"ce-datacontenttype": "application/msgpack"}
    deep, limit = _packed(MAX_DEPTH + 1), _packed(MAX_DEPTH)
    assert from_binary({**BASE, **TIME, **msgpack}, limit).data == limit
    with pytest.raises(MalformedEvent, match=f"body is nested too deeply: more than {MAX_DEPTH} levels"):
        from_binary({**BASE, **TIME, **msgpack}, deep)
    as_base64 = {"datacontenttype": "application/msgpack"}
    assert from_structured(structured(**as_base64, data_base64=base64.b64encode(limit).decode()))
    with pytest.raises(MalformedEvent, match=f"data is nested too deeply: more than {MAX_DEPTH} levels"):
        from_structured(structured(**as_base64, data_base64=base64.b64encode(deep).decode()))
    built = Envelope("e-1", "s", "T", "a.b", datetime.now(UTC), deep, datacontenttype="application/msgpack")
    with pytest.raises(MalformedEvent, match=f"data is nested too deeply: more than {MAX_DEPTH} levels"):
        validate_envelope(built)
    assert validate_envelope(msgspec.structs.replace(built, data=limit))


def test_invalid_utf8_in_an_extension_is_malformed() -> None:
    document = structured(foo="PLACEHOLDER").replace(b'"PLACEHOLDER"', b'"\xff"')
    with pytest.raises(MalformedEvent, match=r"extension 'foo': not valid UTF-8"):
        from_structured(document)


def test_a_header_name_of_other_letters_is_malformed() -> None:
    # "\u212a" (KELVIN SIGN) lower-cases to "k": without the check it passed for ce-partitionkey.
    with pytest.raises(MalformedEvent, match="not ASCII"):
        from_binary({**BASE, **TIME, "ce-partition\u212aey": "k"}, b"{}")


def message(headers: dict[str, str], body: bytes) -> Msg:
    stored = {"Nats-Sequence": "7", "Nats-Subject": "p.3.a.b", **headers}
    return Msg(_client=None, subject="$JS.API.DIRECT.GET.S", data=body, headers=stored)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({**BASE, **TIME}, DEEP),
        ({**BASE, **TIME, "ce-id": "evil%00id"}, b"{}"),
        ({**BASE, **TIME, "Tidings-Stream": "s%00x", "ce-datacontenttype": "application/json"}, b"{}"),
        ({"Content-Type": "application/cloudevents+json"}, structured(id="evil\u0000id")),
        (
            {"Content-Type": "application/cloudevents+json"},
            structured(data_base64=base64.b64encode(DEEP).decode()),
        ),
    ],
)
def test_a_stored_message_that_is_no_event_reads_as_undecodable_without_control_characters(
    headers: dict[str, str], body: bytes
) -> None:
    record = record_of(message(headers, body), "p")
    assert isinstance(record, Undecodable)
    kept = [record.envelope.id, record.envelope.source, record.envelope.type, record.stream, record.error]
    assert all("\x00" not in text and "\n" not in text for text in kept), kept


def test_a_text_log_shows_control_characters_escaped() -> None:
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "event %s handled", ("a\n2026 ERROR forged",), None
    )
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert "a\\x0a2026 ERROR forged" in line


def test_a_text_log_marks_traceback_lines_and_escapes_line_separators() -> None:
    try:
        raise ValueError("line one\n2026-01-01T00:00:00.000Z ERROR forged: record")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "id x\u2028y", (), sys.exc_info())
    lines = TextFormatter().format(record).split("\n")
    assert "\\u2028" in lines[0]
    assert all(line.startswith("  | ") for line in lines[1:]), lines


def test_a_structured_document_given_as_text_is_named_in_tidings_words() -> None:
    with pytest.raises(MalformedEvent, match="required attribute 'source' is missing"):
        from_structured(structured().decode().replace('"source": "s", ', ""))  # type: ignore[arg-type]


def test_a_certificate_error_without_openssls_verdict_is_described() -> None:
    problem = server_certificate_problem(ssl.CertificateError("hostname mismatch"))
    assert problem.startswith("the server's certificate does not verify")


def test_an_error_without_a_message_is_described_by_its_type_alone() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ValueError("bad amount")) == "ValueError: bad amount"
