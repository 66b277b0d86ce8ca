"""Counting what a fault cost, against the store (the source of truth): events it holds that no
handler committed (lost), events committed more than once (duplicated), and events committed
before one that precedes them in their partition (order violations)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from tidings.ports import Feed


@dataclass(frozen=True)
class Tally:
    scenario: str
    events: int
    lost: int
    duplicated: int
    out_of_order: int
    recovery: float  # seconds, from the fault's end to the last event handled

    def __str__(self) -> str:
        return (
            f"{self.scenario}: {self.events} events, lost {self.lost}, duplicated {self.duplicated}, "
            f"order violations {self.out_of_order}, recovery {self.recovery:.1f} s"
        )

    @property
    def clean(self) -> bool:
        return self.lost == self.duplicated == self.out_of_order == 0


async def partitions_of(feed: Feed) -> dict[str, tuple[int, int]]:
    """Every event id the log holds: its partition and its place in it."""
    found: dict[str, tuple[int, int]] = {}
    for partition in range(feed.partitions):
        after, index = 0, 0
        while records := await feed.read_partition(partition, after=after, limit=1000):
            for record in records:
                found[record.envelope.id] = (partition, index)
                index += 1
            after = records[-1].position
    return found


async def tally(scenario: str, feed: Feed, handled: list[str], *, expected: int, recovery: float) -> Tally:
    """``handled``: the ids of the events whose effects committed, in commit order."""
    stored = await partitions_of(feed)
    assert len(stored) == expected, f"the store holds {len(stored)} events, not {expected}"
    counts = Counter(handled)
    last: dict[int, int] = defaultdict(lambda: -1)
    out_of_order = 0
    for event_id in handled:
        partition, index = stored[event_id]
        if index < last[partition]:
            out_of_order += 1
        last[partition] = max(last[partition], index)
    result = Tally(
        scenario=scenario,
        events=len(stored),
        lost=sum(1 for event_id in stored if event_id not in counts),
        duplicated=sum(n - 1 for n in counts.values()),
        out_of_order=out_of_order,
        recovery=recovery,
    )
    print(result)
    return result
