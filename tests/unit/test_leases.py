"""The lease plan: members converge on fair shares without a coordinator, never sharing a partition."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.adapters.sql.consumers import ConsumerSql, lease_statements, plan_leases, release_statements
from tidings.adapters.sqlite import schema, steps


def converge(partitions: int, members: list[str], leases: dict[int, str], rounds: int = 4) -> dict[int, str]:
    """Every member plans in turn (as each would on its next lease renewal), ``rounds`` times."""
    for _ in range(rounds):
        for member in members:
            plan = plan_leases(partitions, members, leases, member)
            for partition in plan.release:
                assert leases.pop(partition) == member
            for partition in plan.claim:
                assert partition not in leases, "claimed a partition someone holds"
                leases[partition] = member
    return leases


def test_a_lone_member_takes_every_partition() -> None:
    plan = plan_leases(8, ["a"], {}, "a")
    assert plan.claim == list(range(8)) and plan.release == []


def test_a_member_over_its_share_gives_up_its_highest_partitions() -> None:
    plan = plan_leases(8, ["a", "b"], dict.fromkeys(range(8), "a"), "a")
    assert plan.release == [4, 5, 6, 7] and plan.keep == [0, 1, 2, 3]


def test_a_newcomer_waits_for_free_partitions() -> None:
    plan = plan_leases(8, ["a", "b"], dict.fromkeys(range(8), "a"), "b")
    assert plan.claim == [] and plan.keep == []


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.integers(1, 16),
    members=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True),
    held=st.dictionaries(st.integers(0, 15), st.sampled_from("abcdefgh"), max_size=16),
)
def test_members_converge_on_fair_shares(partitions: int, members: list[str], held: dict[int, str]) -> None:
    # Leases of members that are gone expire before planning; the rest is the starting point.
    leases = {p: m for p, m in held.items() if p < partitions and m in members}
    final = converge(partitions, members, leases)
    assert sorted(final) == list(range(partitions)), "every partition has exactly one holder"
    counts = [sum(1 for holder in final.values() if holder == m) for m in members]
    assert max(counts) - min(counts) <= 1, f"unfair shares: {counts}"


def test_the_lease_statements_share_a_group_and_outlive_a_silent_member() -> None:
    # The statements both engines run, driven by the SQLite driver on a database in memory.
    connection = sqlite3.connect(":memory:", isolation_level=None)
    for statement in (*schema.CREATE, *schema.CREATE_CONSUMERS):
        connection.execute(statement)
    sql = ConsumerSql.dialect("?")

    def lease(member: str, now: int) -> list[int]:
        return steps.run(connection, lease_statements(sql, "g", member, now_us=now, ttl_us=10, partitions=4))

    assert lease("a", 0) == [0, 1, 2, 3]
    assert lease("b", 1) == [], "a newcomer waits for the surplus"
    assert lease("a", 2) == [0, 1], "the surplus is given up"
    assert lease("b", 3) == [2, 3]
    assert lease("b", 20) == [0, 1, 2, 3], "a member silent past its ttl loses its leases"
    steps.run(connection, release_statements(sql, "g", "b"))
    assert connection.execute("SELECT count(*) FROM tidings_leases").fetchone() == (0,)
    assert connection.execute("SELECT count(*) FROM tidings_members").fetchone() == (0,)
