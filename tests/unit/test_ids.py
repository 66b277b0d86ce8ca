"""Event ids: the ids of events published while handling another are derived, never drawn, so
that a handler run again publishes the same ids (issue 11, finding 7)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.domain.ids import publication_id, uuid7

FAST = settings(max_examples=80, deadline=None, database=None)
CAUSE = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
AT = datetime(2026, 12, 7, 13, 30, 0, 123456, tzinfo=UTC)

causes = st.one_of(st.builds(uuid7), st.text(min_size=1, max_size=40))
groups = st.text(min_size=1, max_size=30)
times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))


#: Ids that tidings gave these publications in another process: a handler run again (after a
#: crash, on another machine, after an upgrade) must publish the very same ids, so anything that
#: changes between processes (a random salt, ``hash()``'s per-process seed) or between versions
#: would break the stored no-op that makes its publications happen once.
KNOWN_IDS = [
    ((CAUSE, AT, "billing", 0), "01a250b2-6c3b-7899-8f8d-a896d651d4e3"),
    ((CAUSE, AT, "billing", 3), "01a250b2-6c3b-7ccb-96a4-e8a06dd2fd46"),
    (
        ("foreign id \u00e9", datetime(1969, 7, 20, tzinfo=UTC), "g.\u00fc", 10_000),
        "00000000-0000-7d5b-aafc-cf41ee471774",
    ),
]


@pytest.mark.parametrize(("inputs", "known"), KNOWN_IDS)
def test_a_publication_gets_the_id_it_got_in_another_process(
    inputs: tuple[str, datetime, str, int], known: str
) -> None:
    assert publication_id(*inputs) == known


@FAST
@given(cause=causes, at=times, group=groups, sequence=st.integers(0, 10_000))
def test_a_publication_id_is_a_uuid7(cause: str, at: datetime, group: str, sequence: int) -> None:
    made = uuid.UUID(publication_id(cause, at, group, sequence))
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert str(made) == publication_id(cause, at, group, sequence)  # canonical lower-case text


def test_the_group_the_cause_and_the_place_each_change_the_id() -> None:
    base = publication_id(CAUSE, AT, "billing", 0)
    others = {
        publication_id(CAUSE, AT, "shipping", 0),
        publication_id(CAUSE, AT, "billing", 1),
        publication_id("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c", AT, "billing", 0),
        # Inputs whose plain concatenation would be equal still differ.
        publication_id(CAUSE + "b", AT, "illing", 0),
        publication_id(CAUSE, AT, "billing0", 0),
    }
    assert base not in others
    assert len(others) == 5


def test_the_id_carries_the_time_of_the_handled_event() -> None:
    made = uuid.UUID(publication_id(CAUSE, AT, "billing", 3))
    assert made.int >> 80 == 1796650200123  # AT in milliseconds since 1970, truncated
    # The same instant in another zone is the same id.
    elsewhere = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert publication_id(CAUSE, elsewhere, "billing", 3) == str(made)


def test_ids_of_events_handled_later_sort_later() -> None:
    """Not a guarantee tidings relies on (the log orders by position), but it keeps the store's
    index of ids growing at its end."""
    first = publication_id(CAUSE, AT, "billing", 9)
    later = publication_id(CAUSE, AT + timedelta(milliseconds=1), "billing", 0)
    assert first < later


def test_times_outside_the_uuid_range_still_make_an_id() -> None:
    early = uuid.UUID(publication_id(CAUSE, datetime(1, 1, 1, tzinfo=UTC), "billing", 0))
    assert early.int >> 80 == 0
    assert early.version == 7
