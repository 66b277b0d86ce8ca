"""Sagas: a business process across services that ends completed or fully compensated.

A saga is declared: it starts on an event, then runs steps; each step sends a command event and
waits for a success or failure reply, and names the command that undoes it. On a failure reply,
a step timeout or an abort, the finished steps are compensated in reverse order::

    fulfil = tidings.Saga("fulfilment", starts_on=OrderPlaced, key=lambda e: e.order_id)
    fulfil.step(
        "reserve",
        send=lambda s: ReserveStock(order_id=s.key, sku=s.start.sku),
        success=StockReserved,
        failure=StockRejected,
        compensate=lambda s: ReleaseStock(order_id=s.key, sku=s.start.sku),
        compensated=StockReleased,
        timeout=timedelta(seconds=30),
    )

An instance's state is its own event stream (``SagaInstance``), so its history is auditable and
it resumes wherever a process dies. Replies are matched by their ``causationid``: the id of the
command they answer, which names the instance, the step, and the attempt (``command_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from tidings.domain.aggregate import Aggregate
from tidings.domain.events import Event
from tidings.errors import ConfigurationError

Kind = Literal["do", "undo"]
Status = Literal["running", "compensating", "completed", "compensated", "stuck"]
ENDED: tuple[Status, ...] = ("completed", "compensated", "stuck")


# -- the events of an instance's stream ---------------------------------------------------------


class SagaStarted(Event, topic="tidings.saga.started", type="tidings.SagaStarted"):
    saga: str
    key: str
    start_type: str
    start_data: str  # the starting event's data (JSON): steps build their commands from it


class SagaCommandSent(Event, topic="tidings.saga.command_sent", type="tidings.SagaCommandSent"):
    step: int
    kind: Kind
    attempt: int
    command_id: str
    command_type: str
    step_name: str = ""


class SagaReplied(Event, topic="tidings.saga.replied", type="tidings.SagaReplied"):
    step: int
    kind: Kind
    succeeded: bool
    command_id: str
    reply_type: str
    reply_data: str
    late: bool = False  # a success after its step was given up: the step is undone at once


class SagaTimedOut(Event, topic="tidings.saga.timed_out", type="tidings.SagaTimedOut"):
    step: int
    kind: Kind
    attempt: int
    command_id: str


class SagaEnded(Event, topic="tidings.saga.ended", type="tidings.SagaEnded"):
    outcome: Status
    reason: str = ""


class SagaTimeout(Event, topic="tidings.saga.timeout", type="tidings.SagaTimeout"):
    """A durable timer's event: the command it names was not answered in time."""

    instance: str
    command_id: str


class SagaInstance(Aggregate, category="saga"):
    """One run of a saga; its id is ``<saga name>:<key>``."""

    saga: str = ""
    key: str = ""
    status: Status = "running"
    step: int = 0  # the step in hand: being run, or (compensating) being undone
    attempt: int = 0
    awaiting: str = ""  # the command id whose reply moves the instance on
    start_type: str = ""
    start_data: str = ""
    done: list[int] = []  # noqa: RUF012 - state default, copied per instance; steps that succeeded
    replies: dict[str, list[str]] = {}  # noqa: RUF012 - step -> [reply type, reply data]
    given_up: list[int] = []  # noqa: RUF012 - steps that timed out unanswered
    undone_late: list[int] = []  # noqa: RUF012 - steps whose success came after they were given up
    reason: str = ""

    def apply(self, event: Event) -> None:
        match event:
            case SagaStarted():
                self.saga, self.key = event.saga, event.key
                self.start_type, self.start_data = event.start_type, event.start_data
            case SagaCommandSent():
                self.step, self.attempt, self.awaiting = event.step, event.attempt, event.command_id
            case SagaReplied(late=True):
                self.undone_late.append(event.step)
                self.replies[str(event.step)] = [event.reply_type, event.reply_data]
            case SagaReplied():
                self.awaiting = ""
                if event.kind == "do" and event.succeeded:
                    self.done.append(event.step)
                    self.replies[str(event.step)] = [event.reply_type, event.reply_data]
                elif event.kind == "do":
                    self.status, self.reason = "compensating", f"step {event.step} failed: {event.reply_type}"
                elif event.step in self.done:
                    self.done.remove(event.step)
            case SagaTimedOut(kind="do"):
                self.awaiting, self.status = "", "compensating"
                self.given_up.append(event.step)
                self.reason = f"step {event.step} timed out"
            case SagaTimedOut():
                self.awaiting = ""
            case SagaEnded():
                self.status, self.awaiting = event.outcome, ""
                self.reason = event.reason or self.reason


def command_id(instance: str, step: int, kind: Kind, attempt: int) -> str:
    return f"{instance}/{step}/{kind}/{attempt}"


def parse_command_id(value: str) -> tuple[str, int, Kind, int] | None:
    """``(instance, step, kind, attempt)`` of a command id, or None if it is none."""
    parts = value.rsplit("/", 3)
    if len(parts) != 4 or parts[2] not in ("do", "undo") or not (parts[1].isdigit() and parts[3].isdigit()):
        return None
    kind: Kind = "do" if parts[2] == "do" else "undo"
    return parts[0], int(parts[1]), kind, int(parts[3])


# -- the definition ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SagaData:
    """What a step builds its command from: the saga's key, its starting event, and the success
    replies of the steps so far (by step name)."""

    id: str
    key: str
    start: Any
    replies: dict[str, Any]


@dataclass(frozen=True)
class Step:
    name: str
    send: Callable[[SagaData], Event]
    success: type[Event]
    failure: type[Event] | None
    compensate: Callable[[SagaData], Event] | None
    compensated: type[Event] | None
    timeout: timedelta
    deadline: timedelta | None = None


@dataclass
class Saga:
    """An orchestrated saga: ``starts_on`` an event, keyed by ``key(event)``, running ``step``s."""

    name: str
    starts_on: type[Event]
    key: Callable[[Any], str]
    #: How often a compensation that is not confirmed in time is sent again before the instance
    #: is declared stuck (and dead-lettered for an operator); the wait doubles each time.
    compensation_attempts: int = 5
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " /:"):
            raise ConfigurationError(f"a saga needs a name without spaces, '/' or ':', got {self.name!r}")

    def step(
        self,
        name: str,
        *,
        send: Callable[[SagaData], Event],
        success: type[Event],
        failure: type[Event] | None = None,
        compensate: Callable[[SagaData], Event] | None = None,
        compensated: type[Event] | None = None,
        timeout: timedelta = timedelta(seconds=30),
        deadline: timedelta | None = None,
    ) -> Saga:
        """Add a step; returns the saga, so that steps can be chained. ``deadline`` gives the
        command a time to live: a service that gets to it later dead-letters it (``expired``),
        and the step times out."""
        if any(step.name == name for step in self.steps):
            raise ConfigurationError(f"saga {self.name!r} already has a step {name!r}")
        if compensated is not None and compensate is None:
            raise ConfigurationError(f"step {name!r}: a compensated reply needs a compensate command")
        if timeout <= timedelta(0):
            raise ConfigurationError(f"step {name!r}: the timeout must be positive")
        self.steps.append(Step(name, send, success, failure, compensate, compensated, timeout, deadline))
        return self

    def reply_types(self) -> set[type[Event]]:
        replies: set[type[Event]] = set()
        for step in self.steps:
            replies.add(step.success)
            replies.update(t for t in (step.failure, step.compensated) if t is not None)
        return replies
