"""What metrics ask of a SQL log, cheaply: a partition's head and the dead letters' counts.

The head is one lookup at the end of the ``(partition, position)`` index
(``tidings_events_by_partition``), whatever the length of the log; the counts are one grouped
pass over the dead letter table, whose size is that of the queues and their history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState

DEAD_LETTER_COUNTS: Final = (
    "SELECT group_name, reason, state, COUNT(*) FROM tidings_dead_letters GROUP BY group_name, reason, state"
)


def partition_head(mark: str) -> str:
    """The position of a partition's last event (0: none), in a dialect's parameter ``mark``."""
    return f"SELECT COALESCE(MAX(position), 0) FROM tidings_events WHERE partition = {mark}"


def dead_letter_counts_of(
    rows: Iterable[Sequence[Any]],
) -> dict[tuple[str, DeadLetterReason, DeadLetterState], int]:
    """The grouped count's rows, keyed by group, reason and state (read as the enums)."""
    return {
        (group, DeadLetterReason(reason), DeadLetterState(state)): int(count)
        for group, reason, state, count in rows
    }
