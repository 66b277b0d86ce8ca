"""The checks of an append, made once a batch where that is cheaper: every event is held to what
``validate_envelope`` holds one event to, whatever its place in the batch."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.adapters.sql.common import Partitioner
from tidings.adapters.sql.rows import plan_rows
from tidings.domain.envelope import (
    DEFAULT_MAX_SIZE,
    SHALLOW_JSON,
    Envelope,
    validate_envelope,
    validate_envelopes,
)
from tidings.domain.events import Event
from tidings.domain.nesting import MAX_DEPTH
from tidings.errors import MalformedEvent
from tidings.runtime.codec import Codec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
TEXT_ATTRIBUTES = ("id", "source", "type", "subject", "correlationid", "causationid", "partitionkey")


def envelopes(count: int) -> list[Envelope]:
    return [
        Envelope(f"e-{n}", "s", "T", "a.b", NOW, b'{"n":%d}' % n, subject="orders-1") for n in range(count)
    ]


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("place", [0, 255, 256, 599])  # first, around the text batch's edge, last
@pytest.mark.parametrize("name", TEXT_ATTRIBUTES)
@pytest.mark.parametrize("character", ["\x00", "\n", "\x1b", "\x7f", "\x85"])
def test_a_control_character_anywhere_in_an_append_is_refused(place: int, name: str, character: str) -> None:
    batch = envelopes(600)
    batch[place] = msgspec.structs.replace(batch[place], **{name: f"a{character}b"})
    with pytest.raises(MalformedEvent, match=f"'{name}' holds a control character"):
        validate_envelopes(batch)
    with pytest.raises(MalformedEvent, match=f"'{name}' holds a control character"):
        plan_rows("orders-1", batch, None, Partitioner(8), DEFAULT_MAX_SIZE)


def test_text_that_is_not_ascii_but_holds_no_control_character_passes() -> None:
    batch = [msgspec.structs.replace(e, subject="caf\xe9\xa0\u2028\U0001f600") for e in envelopes(300)]
    validate_envelopes(batch)


def test_a_text_attribute_that_is_no_string_is_refused_in_a_batch() -> None:
    batch = envelopes(3)
    batch[2] = msgspec.structs.replace(batch[2], subject=7)
    with pytest.raises(MalformedEvent, match="text attributes must be strings"):
        validate_envelopes(batch)


def test_data_too_short_to_nest_past_the_limit_is_all_that_goes_unmeasured() -> None:
    # The shortest data deeper than the limit is longer than SHALLOW_JSON: nothing deeper slips by.
    assert len(nested(MAX_DEPTH + 1)) > SHALLOW_JSON >= len(nested(MAX_DEPTH))
    batch = envelopes(3)
    batch[1] = msgspec.structs.replace(batch[1], data=nested(MAX_DEPTH))
    validate_envelopes(batch)
    batch[2] = msgspec.structs.replace(batch[2], data=nested(MAX_DEPTH + 1))
    with pytest.raises(MalformedEvent, match=f"event e-2: data is nested too deeply: more than {MAX_DEPTH}"):
        validate_envelopes(batch)


class Nest(Event, topic="test.append_checks.nest"):
    value: object


def test_encode_still_measures_data_longer_than_the_bound() -> None:
    codec = Codec(source="s")
    deep: object = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        codec.encode(Nest(value=deep))
    codec.encode(Nest(value=[[[1]]]))


def test_an_unprintable_stream_name_is_made_printable_after_a_printable_one() -> None:
    codec = Codec(source="s")
    event = Nest(value=1)
    assert codec.encode(event, subject="orders-1").subject == "orders-1"
    assert codec.encode(event, subject="orders-1").subject == "orders-1"
    made = codec.encode(event, subject="orders\n1").subject
    assert made is not None and made.isprintable()


def test_the_stream_s_partition_is_worked_out_once_an_append() -> None:
    keys: list[str] = []

    def partition_of(key: str) -> int:
        keys.append(key)
        return len(key) % 4

    batch = envelopes(100)
    batch[7] = msgspec.structs.replace(batch[7], partitionkey="customer-9")
    rows = plan_rows("orders-1", batch, None, partition_of, DEFAULT_MAX_SIZE)
    assert sorted(keys) == ["customer-9", "orders-1"]
    expected = [len("customer-9" if n == 7 else "orders-1") % 4 for n in range(100)]
    assert [row.partition for row in rows] == expected


# Any UTF-8 text, control characters included (surrogates cannot be UTF-8).
TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)


def verdict(check: Callable[[], object]) -> str | None:
    try:
        check()
    except MalformedEvent as exc:
        return str(exc)
    return None


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(TEXT_ATTRIBUTES), TEXT), min_size=1, max_size=40))
def test_a_batch_is_refused_exactly_when_one_of_its_events_is(changes: list[tuple[str, str]]) -> None:
    batch = [
        msgspec.structs.replace(e, **{name: text})
        for e, (name, text) in zip(envelopes(len(changes)), changes, strict=True)
    ]
    first = next((v for e in batch if (v := verdict(partial(validate_envelope, e))) is not None), None)
    assert verdict(lambda: validate_envelopes(batch)) == first
