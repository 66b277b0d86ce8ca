"""Event-sourced aggregates: state rebuilt by applying events; commands record new ones.

::

    class Order(tidings.Aggregate, category="order", snapshot_every=100):
        status: str = "new"
        total: int = 0

        def place(self, total: int) -> None:
            self.record(OrderPlaced(order_id=self.id, total=total))

        def apply(self, event: tidings.Event) -> None:
            match event:
                case OrderPlaced(total=total):
                    self.status, self.total = "placed", total

The annotated attributes are the aggregate's state: they get their defaults on a new instance and
form the snapshot. A snapshot carries a fingerprint of those annotations, so one taken before the
state's shape changed is ignored rather than trusted.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import typing
from typing import Any, ClassVar

import msgspec

from tidings.domain.events import Event
from tidings.errors import RegistrationError


class Aggregate:
    """Base of event-sourced aggregates. Subclasses implement ``apply``."""

    category: ClassVar[str]
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1
    _state_type: ClassVar[type[msgspec.Struct] | None] = None
    _state_fields: ClassVar[tuple[str, ...]] = ()
    _state_defaults: ClassVar[dict[str, Any]] = {}
    _snapshot_schema: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        category: str | None = None,
        snapshot_every: int | None = None,
        snapshot_version: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.category = category or getattr(cls, "category", None) or cls.__name__.lower()
        if snapshot_every is not None:
            if snapshot_every < 1:
                raise RegistrationError(f"{cls.__name__}: snapshot_every must be >= 1")
            cls.snapshot_every = snapshot_every
        if snapshot_version is not None:
            cls.snapshot_version = snapshot_version
        cls._state_type = None  # built on first use: annotations may name later classes
        own = {
            name: cls.__dict__[name]
            for name in inspect.get_annotations(cls)
            if name in cls.__dict__ and not name.startswith("_")
        }
        cls._state_defaults = {**getattr(cls, "_state_defaults", {}), **own}

    def __init__(self, id: str) -> None:
        self.id = id
        #: The stream version this instance was loaded or saved at (0: never stored).
        self.version = 0
        self._pending: list[Event] = []
        for name, default in self._state_defaults.items():
            setattr(self, name, copy.copy(default))

    @classmethod
    def stream_of(cls, id: str) -> str:
        """The stream that holds the events of the aggregate with this id."""
        return f"{cls.category}-{id}"

    @property
    def stream(self) -> str:
        return self.stream_of(self.id)

    def apply(self, event: Event) -> None:
        """Change state for one event. Must not fail for an event that was recorded."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(event)")

    def record(self, event: Event) -> None:
        """Apply a new event and keep it to be saved."""
        self.apply(event)
        self._pending.append(event)

    @property
    def pending(self) -> tuple[Event, ...]:
        return tuple(self._pending)

    def _saved(self, version: int) -> None:
        """The save committed at ``version``: nothing is pending any more. Called by the
        runtime's one save path (``runtime/repository.py``), never before the commit, so that
        a save whose commit failed can be tried again with its events."""
        self._pending.clear()
        self.version = version

    # -- snapshots ---------------------------------------------------------------------------

    @classmethod
    def snapshot_due(cls, before: int, after: int) -> bool:
        """Whether a save from version ``before`` to ``after`` passes a multiple of
        ``snapshot_every``: then a snapshot of ``after`` is taken. Saves of many events at once
        pass a multiple without landing on it, so "every N" counts crossings, not versions."""
        every = cls.snapshot_every
        return every is not None and every > 0 and after // every > before // every

    @classmethod
    def snapshot_schema(cls) -> str:
        """The state's shape: the declared version plus a fingerprint of the annotated fields."""
        cached: str | None = cls.__dict__.get("_snapshot_schema")
        if cached is not None:
            return cached
        state_type = cls._snapshot_type()
        shape = repr([(f, repr(t)) for f, t in typing.get_type_hints(state_type).items()])
        fingerprint = hashlib.sha256(shape.encode()).hexdigest()[:16]
        schema = f"{cls.__qualname__}/{cls.snapshot_version}/{fingerprint}"
        cls._snapshot_schema = schema
        return schema

    @classmethod
    def _snapshot_type(cls) -> type[msgspec.Struct]:
        if cls._state_type is None:
            hints = typing.get_type_hints(cls)
            fields = [(name, hints[name]) for name in cls._state_defaults if name in hints]
            cls._state_fields = tuple(name for name, _ in fields)
            cls._state_type = msgspec.defstruct(f"{cls.__name__}State", fields)
        return cls._state_type

    def snapshot_state(self) -> bytes:
        state_type = self._snapshot_type()
        state = state_type(**{name: getattr(self, name) for name in self._state_fields})
        return msgspec.json.encode(state)

    def restore_state(self, data: bytes) -> None:
        state = msgspec.json.decode(data, type=self._snapshot_type())
        for name in self._state_fields:
            setattr(self, name, getattr(state, name))
