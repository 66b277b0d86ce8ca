"""Events: immutable, typed facts with a topic, a type name and a schema version.

An event class is a frozen ``msgspec.Struct`` declared with its topic::

    class OrderPlaced(tidings.Event, topic="order.placed"):
        order_id: str
        total: int

Declaring a class registers it under its type name (the class name unless ``type=`` says
otherwise). Schemas evolve by rule: a new field gets a default; anything else is a new
``version=`` with an upcaster that lifts the stored data of the previous version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, dataclass_transform

import msgspec

from tidings.domain.topics import validate_topic
from tidings.errors import RegistrationError, UnknownEventType

#: An upcaster turns the decoded data of version ``n`` into the data of version ``n + 1``.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

E = TypeVar("E", bound="Event")


# Event classes are frozen and keyword-only by default; this tells type checkers so.
@dataclass_transform(field_specifiers=(msgspec.field,), frozen_default=True, kw_only_default=True)
class EventMeta(msgspec.StructMeta):
    """Takes the ``topic``, ``type`` and ``version`` class keywords and registers the class."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        *,
        topic: str | None = None,
        type: str | None = None,
        version: int = 1,
        abstract: bool = False,
        **struct_options: Any,
    ) -> EventMeta:
        struct_options.setdefault("frozen", True)
        struct_options.setdefault("kw_only", True)
        cls = super().__new__(mcls, name, bases, namespace, **struct_options)
        if abstract or not any(isinstance(base, EventMeta) for base in bases):
            return cls
        if topic is None:
            raise RegistrationError(f"event class {name} needs a topic: class {name}(Event, topic=...)")
        validate_topic(topic)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RegistrationError(f"event class {name}: version must be an integer >= 1")
        cls.__event_topic__ = topic  # type: ignore[attr-defined]
        cls.__event_type__ = type or name  # type: ignore[attr-defined]
        cls.__event_version__ = version  # type: ignore[attr-defined]
        cls.__event_upcasters__ = {}  # type: ignore[attr-defined]
        default_registry.register(cls)  # type: ignore[arg-type]
        return cls


class Event(msgspec.Struct, metaclass=EventMeta, frozen=True, kw_only=True):
    """Base of every event class. Subclass it with ``topic=`` (and optionally ``type=``, ``version=``)."""

    __event_topic__: ClassVar[str]
    __event_type__: ClassVar[str]
    __event_version__: ClassVar[int]
    __event_upcasters__: ClassVar[dict[int, Upcaster]]

    @classmethod
    def upcaster(cls, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that lifts stored data of ``from_version`` to ``from_version + 1``."""

        def register(function: Upcaster) -> Upcaster:
            if not 1 <= from_version < cls.__event_version__:
                raise RegistrationError(
                    f"{cls.__name__} is at version {cls.__event_version__}; "
                    f"an upcaster from version {from_version} cannot apply"
                )
            if from_version in cls.__event_upcasters__:
                raise RegistrationError(f"{cls.__name__} already has an upcaster from version {from_version}")
            cls.__event_upcasters__[from_version] = function
            return function

        return register


def topic_of(event: Event | type[Event]) -> str:
    return event.__event_topic__


def type_of(event: Event | type[Event]) -> str:
    return event.__event_type__


def version_of(event: Event | type[Event]) -> int:
    return event.__event_version__


class EventRegistry:
    """Maps event type names to classes; a name may be registered only once."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Event]] = {}

    def register(self, cls: type[Event]) -> None:
        name = cls.__event_type__
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            if _same_definition(existing, cls):
                # The same module imported twice (``python -m`` runs a module as ``__main__``
                # and again under its name): keep the newest, it is the same definition.
                self._classes[name] = cls
                return
            raise RegistrationError(
                f"event type {name!r} is registered twice: by "
                f"{existing.__module__}.{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "give one of them another name with type=..."
            )
        self._classes[name] = cls

    def resolve(self, name: str) -> type[Event]:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownEventType(
                f"unknown event type {name!r}: no event class is registered under that name "
                "(is the module that defines it imported?)"
            ) from None

    def topic_of(self, name: str) -> str | None:
        """The topic of the event type ``name``; ``None`` if no class is registered under it
        (an event from another producer that carries no topic gets its type's)."""
        cls = self._classes.get(name)
        return None if cls is None else cls.__event_topic__

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)


def _same_definition(a: type[Event], b: type[Event]) -> bool:
    return (
        a.__qualname__ == b.__qualname__
        and a.__event_topic__ == b.__event_topic__
        and a.__event_version__ == b.__event_version__
        and a.__struct_fields__ == b.__struct_fields__
        and {a.__module__, b.__module__} & {"__main__", "__mp_main__"} != set()
    )


#: The registry that event classes join when they are declared.
default_registry = EventRegistry()


class Erased(Event, topic="tidings.erased", type="tidings.Erased"):
    """What an event reads as once the data key of its scope was shredded: its data is gone for
    good; its place in the stream and its envelope's metadata remain. Aggregates replay past it,
    and consumer groups pass it by without calling their handler."""

    erased_type: str
