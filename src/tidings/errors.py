"""The one exception tree of tidings.

Every error that tidings raises on purpose derives from ``TidingsError``; adapters translate their
driver's errors at their edge, so callers never need to import a driver to catch a failure::

    TidingsError
    ├── ConfigurationError        a setting or URL that cannot work (unknown scheme, missing extra)
    ├── InvalidArgument           an argument that can never work (bad stream name, naive time);
    │                             also a ValueError
    ├── BackendUnavailable        the engine cannot be reached (names the URL, never its password)
    │   └── StoreFull             the store's disk or size limit is full: writes wait for space
    ├── ConcurrencyError          expected_version did not match the stream's version
    ├── IntegrityError            stored data was cut short or altered behind tidings' back
    │   └── Undecryptable         sealed data that cannot be opened (altered, moved, no key)
    ├── AggregateNotFound         no events exist for the requested aggregate
    ├── InvalidTopic              a topic or pattern that breaks the grammar
    ├── AccessDenied              the policy does not let the App's principal publish or subscribe
    ├── RegistrationError         two event classes under one type name, a bad declaration
    └── MalformedEvent            an envelope or payload that cannot be decoded safely
        ├── PayloadTooLarge       bigger than the configured limit
        └── UnknownEventType      a type name that no registered class carries
"""

from __future__ import annotations


class TidingsError(Exception):
    """Root of every error that tidings raises on purpose."""


class ConfigurationError(TidingsError):
    """A setting, URL or installation that cannot work as given."""


class InvalidArgument(TidingsError, ValueError):
    """An argument that can never work, such as an empty stream name or a time without a zone."""


class BackendUnavailable(TidingsError):
    """The store or bus could not be reached; the message names the URL without its password."""


class StoreFull(BackendUnavailable):
    """The store's disk (or its configured size limit) is full: nothing of the failed write was
    stored. Retried like any outage, so that work resumes by itself once space is freed."""


class ConcurrencyError(TidingsError):
    """An append's ``expected_version`` did not match the stream's current version."""

    def __init__(self, stream: str, expected: int | str, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, but the append expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IntegrityError(TidingsError):
    """Stored events fail their hash chain or the storage file is damaged."""


class Undecryptable(IntegrityError):
    """Sealed data that cannot be opened: altered, moved, or its key is unknown here."""


class AggregateNotFound(TidingsError):
    """No events were found for an aggregate that was asked for."""


class InvalidTopic(TidingsError):
    """A topic or subscription pattern that does not follow the topic grammar."""


class AccessDenied(TidingsError):
    """The access policy does not let the App's principal publish to a topic or subscribe to a
    pattern; the denial is recorded as a ``security.denied`` event."""

    def __init__(self, principal: str, operation: str, topic: str) -> None:
        verb = "publish to topic" if operation == "publish" else "subscribe to pattern"
        super().__init__(f"principal {principal!r} may not {verb} {topic!r} (denied by the access policy)")
        self.principal = principal
        self.operation = operation
        self.topic = topic


class RegistrationError(TidingsError):
    """An event class was declared in a way that cannot work (such as a duplicate type name)."""


class MalformedEvent(TidingsError):
    """An envelope or event payload that could not be decoded; the message says what is wrong."""


class PayloadTooLarge(MalformedEvent):
    """An encoded envelope or payload is larger than the configured limit."""


class UnknownEventType(MalformedEvent):
    """The envelope names an event type that no registered class carries."""


def describe(exc: BaseException) -> str:
    """An error as one line for a log or a dead letter: its type, and its message when it has one
    (``TimeoutError()`` says nothing else, and ``"TimeoutError: "`` reads as if text went missing)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
