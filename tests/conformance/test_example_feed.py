"""Runs the Feed suite on the example adapter of docs/adapters.md (examples/adapters), as a
third-party engine runs it: the suite's tests, and a ``feed_under_test`` fixture of its own."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from examples.adapters.memory_feed import MemoryFeed, MemoryLog

from tidings.domain.envelope import Envelope
from tidings.ports import Feed
from tidings.testing.conformance.feed import *  # noqa: F403


class MemoryFeedUnderTest:
    """What the Feed suite needs: the feed, a way to fill its log, and the log opened again."""

    def __init__(self) -> None:
        self.log = MemoryLog()
        self.feed = MemoryFeed(self.log)

    async def fill(self, stream: str, envelopes: Sequence[Envelope]) -> None:
        self.log.append(stream, envelopes)

    @asynccontextmanager
    async def reopen(self) -> AsyncIterator[Feed]:
        yield MemoryFeed(self.log)


@pytest.fixture
def feed_under_test() -> MemoryFeedUnderTest:
    return MemoryFeedUnderTest()


ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_show_the_code_that_is_tested() -> None:
    """Each Python block of docs/adapters.md is the example adapter or a part of this module,
    as written: the docs cannot drift from what passes the suite."""
    docs = (ROOT / "docs" / "adapters.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", docs, flags=re.DOTALL | re.MULTILINE)
    example = (ROOT / "examples" / "adapters" / "memory_feed.py").read_text()
    assert example in blocks, "docs/adapters.md must show examples/adapters/memory_feed.py whole"
    here = Path(__file__).read_text()
    assert all(block == example or block in here for block in blocks)
