"""When a save takes a snapshot: pure logic, the same for ``App.save`` and handlers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.domain.aggregate import Aggregate


class Every50(Aggregate, category="unit_every50", snapshot_every=50):
    pass


class Never(Aggregate, category="unit_never"):
    pass


def test_a_save_takes_a_snapshot_when_it_passes_a_multiple() -> None:
    assert Every50.snapshot_due(0, 50)  # lands on it
    assert Every50.snapshot_due(40, 80)  # passes it without landing on it
    assert Every50.snapshot_due(99, 150)  # passes two: one snapshot, of the version saved
    assert not Every50.snapshot_due(50, 99)  # the last one was taken at 50
    assert not Every50.snapshot_due(0, 49)


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=500))
def test_saves_of_one_event_each_snapshot_every_n_versions(before: int, count: int) -> None:
    saves = [v for v in range(before, before + count) if Every50.snapshot_due(v, v + 1)]
    assert saves == [v for v in range(before, before + count) if (v + 1) % 50 == 0]
    assert not any(Never.snapshot_due(v, v + 1) for v in range(before, before + count))
