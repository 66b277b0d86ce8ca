"""Dead-letter reasons and states as one vocabulary (``tidings.domain.dead_letters``): what the
store hands back is the enum, a plain string still compares equal, and a state that does not
exist is refused instead of matching nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import assert_type

import pytest

from tidings import App, Context, DeadLetterReason, DeadLetterState, Event
from tidings.errors import InvalidArgument
from tidings.ports import DeadLetter
from tidings.runtime.unit_of_work import UnitOfWork


class Noted(Event, topic="vocabulary.noted"):
    text: str


async def test_letters_read_back_carry_the_enums(tmp_path: Path) -> None:
    async with App("vocabulary", store=f"sqlite:///{tmp_path / 'letters.db'}") as app:
        letter = DeadLetter(group="g", reason=DeadLetterReason.PARKED, error="e", dead_at=datetime.now(UTC))
        async with app.store.transaction() as tx:
            entry = await tx.groups.dead_letter(letter)
        (read,) = await app.dead_letters("g")
        assert read.id == entry
        assert (read.reason, read.state) == ("parked", "dead")  # stored as their values
        assert read.reason is DeadLetterReason.PARKED and read.state is DeadLetterState.DEAD
        assert await app.redrive([entry]) == 1
        (queued,) = await app.dead_letters("g", state=DeadLetterState.REDRIVE)
        assert queued.state is DeadLetterState.REDRIVE


async def test_an_unknown_state_is_refused_naming_the_states(tmp_path: Path) -> None:
    async with App("vocabulary", store=f"sqlite:///{tmp_path / 'letters.db'}") as app:
        with pytest.raises(InvalidArgument, match=r"one of dead, redrive, redriven, purged, got 'deed'"):
            await app.dead_letters("g", state="deed")  # type: ignore[arg-type]
        assert await app.dead_letters("g", state="dead") == []  # type: ignore[arg-type]


def test_the_unit_of_work_is_typed_for_handlers() -> None:
    """Checked by mypy (``make lint``): ``assert_type`` fails there if the handler's unit of work
    is ``Any`` again."""

    async def handler(event: Noted, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            assert_type(uow, UnitOfWork)

    assert handler.__name__ == "handler"


async def test_a_reason_another_version_wrote_reads_as_itself(tmp_path: Path) -> None:
    """A rolling upgrade or a rollback may leave letters with a reason this version does not
    know: the queue stays listable (and its redrives running), the reason kept as written."""
    async with App("vocabulary", store=f"sqlite:///{tmp_path / 'letters.db'}") as app:
        future = DeadLetterReason("quarantined")
        letter = DeadLetter(group="g", reason=future, error="e", dead_at=datetime.now(UTC))
        async with app.store.transaction() as tx:
            await tx.groups.dead_letter(letter)
        (read,) = await app.dead_letters("g")
        assert read.reason == "quarantined" and isinstance(read.reason, DeadLetterReason)
        assert read.reason not in list(DeadLetterReason)  # not made one of tidings' own
