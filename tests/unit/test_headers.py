"""Header values as the CloudEvents NATS binding carries them (§3.1.3.2): percent-encoded printable
ASCII out, quoted strings and one round of percent-decoding in, invalid UTF-8 refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.domain.headers import HeaderError, needs_encoding, percent_decode, percent_encode

MANY = settings(max_examples=400, deadline=None, database=None)
PRINTABLE_ASCII_BUT_QUOTE = re.compile(r"[!#-~]*")  # U+0021..U+007E without '"'


@MANY
@given(st.text())
def test_any_value_round_trips_and_travels_as_printable_ascii(value: str) -> None:
    encoded = percent_encode(value)
    assert PRINTABLE_ASCII_BUT_QUOTE.fullmatch(encoded)
    assert needs_encoding(value) == (encoded != value)
    # A '%' in the header only ever starts an escape, so the reader cannot misread one.
    assert all(re.fullmatch(r"[0-9A-F]{2}", piece[:2]) for piece in encoded.split("%")[1:])
    assert percent_decode(encoded) == value


@MANY
@given(st.text(alphabet=st.characters(codec="ascii")))
def test_lower_case_escapes_decode_too(value: str) -> None:
    lowered = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), percent_encode(value))
    assert percent_decode(lowered) == value


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("Euro \u20ac \U0001f600", "Euro%20%E2%82%AC%20%F0%9F%98%80"),  # the binding's own example
        ("order%2042", "order%252042"),
        ('say "hi"', "say%20%22hi%22"),
        ("tab\there\r\n", "tab%09here%0D%0A"),
        ("\x7f\x85", "%7F%C2%85"),
        ("a/b?c=d&e#f~!$'()*+,;:@[]{}|\\^`<>", "a/b?c=d&e#f~!$'()*+,;:@[]{}|\\^`<>"),
        ("", ""),
    ],
)
def test_what_is_encoded(value: str, encoded: str) -> None:
    assert percent_encode(value) == encoded
    assert percent_decode(encoded) == value


def test_unnecessary_escapes_are_accepted() -> None:
    assert percent_decode("%41%62c") == "Abc"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ('"quoted value"', "quoted value"),
        ('"with \\"escapes\\" and \\\\"', 'with "escapes" and \\'),
        ('"%C3%A9t%C3%A9"', "\u00e9t\u00e9"),  # unquoted first, then percent-decoded
        ('""', ""),
    ],
)
def test_quoted_strings_of_older_producers(header: str, value: str) -> None:
    assert percent_decode(header) == value


def test_raw_non_ascii_is_read_as_it_is() -> None:
    assert percent_decode("ordre-\u00e9t\u00e9") == "ordre-\u00e9t\u00e9"


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("%C0%A0", "no valid UTF-8"),  # the binding's example: an overlong space
        ("%FF", "no valid UTF-8"),
        ("%ED%A0%80", "no valid UTF-8"),  # an encoded surrogate
        ("%E2%82", "no valid UTF-8"),  # cut short
        ("50%", "two hexadecimal digits"),
        ("50%4", "two hexadecimal digits"),
        ("%G0", "two hexadecimal digits"),
        ('"open', "no closing"),
        ('"', "no closing"),
        ('"a\\"', "lone"),
        ('"a"b"', "unescaped"),
    ],
)
def test_what_is_refused(header: str, problem: str) -> None:
    with pytest.raises(HeaderError, match=problem):
        percent_decode(header)


def test_a_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(HeaderError, match="not valid Unicode"):
        percent_encode("a\ud800")
    with pytest.raises(HeaderError, match="not valid Unicode"):
        percent_decode("\u00e9\ud800")


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=40))
def test_decoding_any_text_fails_only_with_header_error(value: str) -> None:
    try:
        decoded = percent_decode(value)
    except HeaderError:
        return
    assert isinstance(decoded, str)
