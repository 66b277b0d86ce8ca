"""The nesting limit's measure, against a reference that walks the decoded value."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.nesting import MAX_DEPTH, check_depth, nested_deeper
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


def test_malformed_data_is_measured_never_an_error() -> None:
    assert nested_deeper(b"[" * 100_000)
    assert not nested_deeper(b"]" * 100_000)
    assert not nested_deeper(b'"' + b"[" * 1000)  # an unterminated string
