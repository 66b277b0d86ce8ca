"""Members of a group sharing a log's partitions: one task per partition held, leases renewed.

Consumer groups and the outbox relay are both such members: each holds a lease on some
partitions, works through them in order, and moves a checkpoint only while the lease is still
its own (``StoreTransaction.holds_lease``, checked in the transaction that writes the checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

from tidings.errors import BackendUnavailable, TidingsError
from tidings.ports import GroupState, StoreTransaction
from tidings.runtime.log_context import log_fields

log = logging.getLogger("tidings.leasing")


class LeaseLost(TidingsError):
    """This member no longer holds the partition: another member processes it now."""


def member_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PartitionMember:
    """One member of ``group`` (its leases kept in ``groups``): renews its leases every third of
    ``lease_ttl`` and runs ``work(partition)`` for each partition it holds, until ``stop``."""

    def __init__(
        self, groups: GroupState, group: str, *, lease_ttl: float = 10.0, grace: float = 5.0
    ) -> None:
        self.groups = groups
        self.group = group
        self.member = member_id()
        self.lease_ttl = lease_ttl
        self.grace = grace
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._aside: asyncio.Task[None] | None = None  # the pass of ``aside`` under way
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def held(self) -> frozenset[int]:
        """The partitions this member held at its last renewal (``fence`` tells for sure)."""
        return frozenset(self._tasks)

    async def work(self, partition: int) -> None:
        """Process the partition until ``stopping`` (or until cancelled)."""
        raise NotImplementedError

    async def between_leases(self) -> None:
        """Done once per lease renewal, before it (short housekeeping of subclasses)."""

    async def aside(self) -> None:
        """Housekeeping that may take long (it may run a handler: a redrive), in a task of its
        own beside the lease loop: started at a renewal unless a pass is still under way, and
        cancelled on stop after the grace period. Not in the loop, where a slow or hanging pass
        held up the renewals: the leases expired, and another member took the partitions over
        while this one still worked on them."""

    def on_stop(self) -> None:
        """Wake whatever the partition tasks wait on, so that they see ``stopping`` at once."""

    async def run(self) -> None:
        """Hold leases and work until ``stop``; then finish the work in hand and release."""
        with log_fields(group=self.group):  # for the partitions' tasks too, made inside
            await self._hold_leases()

    async def _hold_leases(self) -> None:
        log.info("member %s of %s starting", self.member, self.group)
        try:
            while not self._stopping.is_set():
                try:
                    await self.between_leases()
                    await self.renew()
                except Exception:
                    # The store may be down for a while: keep trying; leases held meanwhile
                    # expire, and other members take the partitions over.
                    log.exception("%s: member %s could not renew its leases", self.group, self.member)
                if self._aside is None or self._aside.done():
                    self._aside = asyncio.create_task(self._run_aside())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.lease_ttl / 3)
        finally:
            # Graceful: each partition finishes the item in hand (its loop checks for the stop
            # between items); what still runs after the grace period is cancelled, and its
            # uncommitted work is redone by whoever takes the partition next.
            running = [*self._tasks.values(), *([self._aside] if self._aside is not None else [])]
            if running:
                await asyncio.wait(running, timeout=self.grace)
            if self._aside is not None:
                self._aside.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._aside
            for partition in list(self._tasks):
                await self._stop_partition(partition)
            with contextlib.suppress(TidingsError):
                await self.groups.release(self.group, self.member)
            log.info("member %s of %s stopped", self.member, self.group)

    async def _run_aside(self) -> None:
        try:
            await self.aside()
        except Exception:
            # The store may be down: the next renewal starts another pass.
            log.exception("%s: member %s: housekeeping failed", self.group, self.member)

    def stop(self) -> None:
        self._stopping.set()
        self.on_stop()

    async def fence(self, tx: StoreTransaction, partition: int) -> None:
        """Raise ``LeaseLost`` inside ``tx`` unless this member still holds the partition."""
        if not await tx.groups.holds_lease(self.group, partition, self.member):
            raise LeaseLost(f"member {self.member} lost partition {partition} of {self.group}")

    async def renew(self) -> None:
        """Renew the leases, taking or giving up partitions for an even share, and start or stop
        their tasks (every third of ``lease_ttl``; housekeeping that runs longer calls it too)."""
        held = set(await self.groups.lease(self.group, self.member, ttl=self.lease_ttl))
        for partition in list(self._tasks):
            if partition not in held or self._tasks[partition].done():
                await self._stop_partition(partition)
        for partition in held - set(self._tasks):
            self._tasks[partition] = asyncio.create_task(self._supervise(partition))

    async def _supervise(self, partition: int) -> None:
        """Run ``work``; while a backend is unavailable (a broker's leader election, a store's
        restart), retry with a growing pause instead of giving the partition up."""
        pause = 0.05
        with log_fields(partition=partition):
            while not self._stopping.is_set():
                try:
                    await self.work(partition)
                    return
                except BackendUnavailable as exc:
                    log.warning("%s: partition %d: %s (again in %.2f s)", self.group, partition, exc, pause)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), pause)
                    pause = min(pause * 2, self.lease_ttl / 3)

    async def _stop_partition(self, partition: int) -> None:
        task = self._tasks.pop(partition)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, LeaseLost):
            pass
        except Exception:
            log.exception("%s: partition %d stopped on an error", self.group, partition)
