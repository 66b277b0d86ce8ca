"""The nesting limit's measure, against a reference that walks the decoded value."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.nesting import (
    MAX_DEPTH,
    check_depth,
    check_msgpack_depth,
    msgpack_nested_deeper,
    nested_deeper,
)
from tidings.errors import MalformedEvent

# Strings full of what could be mistaken for nesting: brackets, quotes and backslashes.
_tricky = st.text(alphabet='[]{}"\\ax\u00e9', max_size=6)
_values = st.recursive(
    st.none() | st.integers() | _tricky,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_tricky, inner, max_size=3),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(_values, st.integers(min_value=0, max_value=8), st.booleans())
def test_the_measure_agrees_with_the_value(value: Any, limit: int, ascii_only: bool) -> None:
    for data in (json.dumps(value, ensure_ascii=ascii_only).encode(), msgspec.json.encode(value)):
        assert nested_deeper(data, limit) == (depth_of(value) > limit)


def nested(levels: int) -> bytes:
    return (
        b'{"a":' * (levels // 2)
        + b"[" * (levels - levels // 2)
        + b"]" * (levels - levels // 2)
        + b"}" * (levels // 2)
    )


def test_at_the_limit_and_one_more() -> None:
    assert not nested_deeper(nested(MAX_DEPTH))
    assert nested_deeper(nested(MAX_DEPTH + 1))
    with pytest.raises(MalformedEvent, match=f"data is nested too deeply: more than {MAX_DEPTH} levels"):
        check_depth(nested(MAX_DEPTH + 1), "data")


def test_brackets_in_strings_do_not_nest() -> None:
    assert not nested_deeper(json.dumps(["[" * 1000, "\\", '"{' * 500]).encode())
    # Empty strings beside strings of brackets, and quotes escaped before brackets: the pass that
    # takes away empty strings must leave every string with something in it to the exact measure.
    assert not nested_deeper(json.dumps({"[" * 300: "", "": "]" * 300, "x": ["", "{" * 300]}).encode())
    assert not nested_deeper(json.dumps(['\\"' + "[" * 300, '"', "\\\\"]).encode())
    assert nested_deeper(json.dumps([""] * 300 + [nested_value(MAX_DEPTH)]).encode())


def nested_value(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_malformed_data_is_measured_never_an_error() -> None:
    assert nested_deeper(b"[" * 100_000)
    assert not nested_deeper(b"]" * 100_000)
    assert not nested_deeper(b'"' + b"[" * 1000)  # an unterminated string


# Every msgpack type msgspec writes: ints and floats of each width, strings, binaries, extensions
# and containers of each header size (fix, 16-bit; 32-bit ones are too large to generate).
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.binary(max_size=300)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=20))
)
_packed = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=4), inner, max_size=18),
    max_leaves=60,
)


@given(_packed, st.integers(min_value=0, max_value=8))
def test_the_msgpack_measure_agrees_with_the_value(value: Any, limit: int) -> None:
    data = msgspec.msgpack.encode(value)
    assert msgpack_nested_deeper(data, limit) == (depth_of(value) > limit)


def test_msgpack_at_the_limit_and_one_more() -> None:
    """Nested as deep as JSON may, and one level more: refused in the same words."""
    for levels in (MAX_DEPTH, MAX_DEPTH + 1):
        value: Any = []
        for level in range(levels - 1):
            value = {"a": value} if level % 2 else [value, 1]
        data = msgspec.msgpack.encode(value)
        assert msgpack_nested_deeper(data) == (levels > MAX_DEPTH)
    with pytest.raises(MalformedEvent, match=f"data is nested too deeply: more than {MAX_DEPTH} levels"):
        check_msgpack_depth(data, "data")


def test_malformed_msgpack_is_measured_never_an_error() -> None:
    assert msgpack_nested_deeper(b"\x91" * 100_000)  # arrays of one, never closed
    assert not msgpack_nested_deeper(b"\xc1" * 1000)  # a type byte msgpack never uses
    assert not msgpack_nested_deeper(b"\x91" * 100 + b"\xdb\xff\xff\xff\xff")  # a string cut short
    assert not msgpack_nested_deeper(b"\xdf\xff\xff\xff\xff" + b"\x00" * 1000)  # a map cut short
