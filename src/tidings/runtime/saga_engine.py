"""Running sagas: each saga is a consumer group (``tidings:saga:<name>``) of the App that adds it.

The group reads the saga's starting events, the replies of its steps and its timeouts. Handling
one loads the instance (its own stream), decides, and commits in one unit of work: the instance's
new events, the next command, and the durable timer of that command's timeout; so a crash at any
point resumes where the last commit left off, and a redelivered event changes nothing (inbox).

Exactly once, also for replies that come twice or late: a reply moves an instance only if it
answers the command the instance awaits. A success that arrives after its step was given up
(timed out) has the step undone at once. A compensation that is not confirmed in time is sent
again, waiting twice as long each time; after ``compensation_attempts`` the instance is ``stuck``
and a dead letter names it for an operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.domain.events import Event, EventRegistry
from tidings.domain.saga import (
    ENDED,
    Kind,
    Saga,
    SagaCommandSent,
    SagaData,
    SagaEnded,
    SagaInstance,
    SagaReplied,
    SagaStarted,
    SagaTimedOut,
    SagaTimeout,
    command_id,
    parse_command_id,
)
from tidings.domain.topics import AnyOf
from tidings.errors import AggregateNotFound
from tidings.runtime.outbox import RESERVED_GROUP_PREFIX
from tidings.runtime.telemetry import set_attributes

if TYPE_CHECKING:
    from tidings.runtime.context import Context
    from tidings.runtime.unit_of_work import UnitOfWork

log = logging.getLogger("tidings.saga")


class SagaEngine:
    """Drives the instances of one saga."""

    def __init__(self, saga: Saga, registry: EventRegistry, now: Callable[[], datetime]) -> None:
        self.saga = saga
        self.registry = registry
        self.now = now  # the App's clock.now
        self.group = f"{RESERVED_GROUP_PREFIX}saga:{saga.name}"
        topics = {saga.starts_on.__event_topic__, SagaTimeout.__event_topic__}
        topics.update(reply.__event_topic__ for reply in saga.reply_types())
        self.pattern = AnyOf(sorted(topics))

    def instance_id(self, key: str) -> str:
        return f"{self.saga.name}:{key}"

    async def handle(self, event: Event, ctx: Context) -> None:
        async with ctx.unit_of_work() as uow:
            if isinstance(event, self.saga.starts_on):
                await self._start(event, ctx, uow)
            elif isinstance(event, SagaTimeout):
                if event.instance.startswith(f"{self.saga.name}:"):
                    await self._timeout(event, uow)
            else:
                await self._reply(event, ctx, uow)

    # -- starting --------------------------------------------------------------------------------

    async def _start(self, event: Event, ctx: Context, uow: UnitOfWork) -> None:
        key = str(self.saga.key(event))
        instance = await self._load(uow, self.instance_id(key))
        if instance.version > 0:
            return  # started already (the same start event published twice)
        data = msgspec.json.encode(event).decode()
        instance.record(
            SagaStarted(saga=self.saga.name, key=key, start_type=ctx.envelope.type, start_data=data)
        )
        self._publish(instance, 0, "do", 1, uow, await_reply=True)
        uow.save(instance)

    # -- replies -----------------------------------------------------------------------------------

    async def _reply(self, event: Event, ctx: Context, uow: UnitOfWork) -> None:
        answered = parse_command_id(ctx.envelope.causationid or "")
        if answered is None or not answered[0].startswith(f"{self.saga.name}:"):
            return  # the same event type, sent by someone else for something else
        instance_id, index, kind, _ = answered
        if index >= len(self.saga.steps):
            return
        try:
            instance = await uow.load(SagaInstance, instance_id)
        except AggregateNotFound:
            return
        step, reply = self.saga.steps[index], ctx.envelope
        if kind == "do" and isinstance(event, step.success):
            succeeded = True
        elif kind == "do" and step.failure is not None and isinstance(event, step.failure):
            succeeded = False
        elif kind == "undo" and step.compensated is not None and isinstance(event, step.compensated):
            succeeded = True
        else:
            return  # not an answer this step expects
        answer = SagaReplied(
            step=index,
            kind=kind,
            succeeded=succeeded,
            command_id=reply.causationid or "",
            reply_type=reply.type,
            reply_data=msgspec.json.encode(event).decode(),  # the envelope's data may be sealed
        )
        if not self._answers(instance, answered):
            # A duplicate, or the answer to a command given up already. Only a late success of
            # a step is acted on: what the step did must be undone.
            late = kind == "do" and succeeded and index in instance.given_up
            if late and step.compensate is not None and index not in instance.undone_late:
                instance.record(msgspec.structs.replace(answer, late=True))
                self._publish(instance, index, "undo", 1, uow, await_reply=False)
                uow.save(instance)
            return
        uow.cancel(f"timeout:{instance.awaiting}")  # answered in time: its timeout will not fire
        instance.record(answer)
        if kind == "do" and succeeded:
            self._advance(instance, index + 1, uow)
        else:
            self._compensate_next(instance, uow)
        uow.save(instance)

    @staticmethod
    def _answers(instance: SagaInstance, answered: tuple[str, int, Kind, int]) -> bool:
        """Whether a reply answers what the instance awaits: the command of its step in hand, of
        any attempt (a compensation sent again may be confirmed for an earlier sending)."""
        awaited = parse_command_id(instance.awaiting)
        return awaited is not None and awaited[:3] == answered[:3]

    # -- timeouts ----------------------------------------------------------------------------------

    async def _timeout(self, event: SagaTimeout, uow: UnitOfWork) -> None:
        try:
            instance = await uow.load(SagaInstance, event.instance)
        except AggregateNotFound:
            return
        if instance.awaiting != event.command_id or instance.status in ENDED:
            return  # answered in time, or the instance moved on: a stale timer
        parsed = parse_command_id(event.command_id)
        if parsed is None:
            return
        _, index, kind, attempt = parsed
        instance.record(SagaTimedOut(step=index, kind=kind, attempt=attempt, command_id=event.command_id))
        if kind == "do":
            self._compensate_next(instance, uow)
        elif attempt < self.saga.compensation_attempts:
            self._publish(instance, index, "undo", attempt + 1, uow, await_reply=True)
        else:
            reason = (
                f"step {self.saga.steps[index].name!r}: compensation unconfirmed after {attempt} attempts"
            )
            instance.record(SagaEnded(outcome="stuck", reason=reason))
            uow.save(instance)
            uow.dead_letter(f"saga {instance.id} is stuck: {reason}")
            return
        uow.save(instance)

    # -- moving on ---------------------------------------------------------------------------------

    def _advance(self, instance: SagaInstance, index: int, uow: UnitOfWork) -> None:
        if index < len(self.saga.steps):
            self._publish(instance, index, "do", 1, uow, await_reply=True)
        else:
            instance.record(SagaEnded(outcome="completed"))

    def _compensate_next(self, instance: SagaInstance, uow: UnitOfWork) -> None:
        """Undo the last finished step that has a compensation; end when none is left."""
        for index in reversed(list(instance.done)):
            step = self.saga.steps[index]
            if step.compensate is None:
                continue
            if step.compensated is None:
                # Nothing confirms it: sent once (delivered at least once), counted as done.
                self._publish(instance, index, "undo", 1, uow, await_reply=False)
                instance.record(
                    SagaReplied(
                        step=index, kind="undo", succeeded=True, command_id="", reply_type="", reply_data=""
                    )
                )
                continue
            self._publish(instance, index, "undo", 1, uow, await_reply=True)
            return
        instance.record(SagaEnded(outcome="compensated"))

    def _publish(
        self,
        instance: SagaInstance,
        index: int,
        kind: Kind,
        attempt: int,
        uow: UnitOfWork,
        *,
        await_reply: bool,
    ) -> None:
        step = self.saga.steps[index]
        builder = step.send if kind == "do" else step.compensate
        if builder is None:
            return
        command = builder(self.data(instance))
        # On the handler's process span: which saga and step its commands (sent at commit) are.
        set_attributes({"tidings.saga.name": self.saga.name, "tidings.saga.step": step.name})
        sent_id = command_id(instance.id, index, kind, attempt)
        uow.publish(command, key=instance.key, id=sent_id, ttl=step.deadline if kind == "do" else None)
        if not await_reply:
            return
        instance.record(
            SagaCommandSent(
                step=index,
                kind=kind,
                attempt=attempt,
                command_id=sent_id,
                command_type=type(command).__name__,
                step_name=step.name,
            )
        )
        wait = step.timeout * (2 ** (attempt - 1))
        uow.schedule(
            SagaTimeout(instance=instance.id, command_id=sent_id),
            at=self.now() + wait,
            key=instance.key,
            id=f"timeout:{sent_id}",
        )

    # -- reading an instance -----------------------------------------------------------------------

    async def _load(self, uow: UnitOfWork, instance_id: str) -> SagaInstance:
        try:
            return await uow.load(SagaInstance, instance_id)
        except AggregateNotFound:
            return SagaInstance(instance_id)

    def data(self, instance: SagaInstance) -> SagaData:
        """The instance's key, starting event and step replies, decoded into their classes."""
        start = self._decode(instance.start_type, instance.start_data)
        replies = {
            self.saga.steps[int(index)].name: self._decode(*reply)
            for index, reply in instance.replies.items()
            if index.isdigit() and len(reply) == 2
        }
        return SagaData(id=instance.id, key=instance.key, start=start, replies=replies)

    def _decode(self, type_name: str, data: str) -> Any:
        return msgspec.json.decode(data, type=self.registry.resolve(type_name))
