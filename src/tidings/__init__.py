"""tidings: a framework and runtime for event-driven services."""

from tidings.app import App
from tidings.domain.aggregate import Aggregate
from tidings.domain.dead_letters import DeadLetterReason, DeadLetterState
from tidings.domain.envelope import Envelope, RecordedEvent, Stored
from tidings.domain.events import Erased, Event, EventRegistry
from tidings.domain.integrity import IntegrityReport, VerifiedState
from tidings.domain.policy import Policy, Principal, SecurityDenied
from tidings.domain.saga import Saga, SagaData, SagaInstance
from tidings.errors import (
    AccessDenied,
    AggregateNotFound,
    BackendUnavailable,
    ConcurrencyError,
    ConfigurationError,
    IntegrityError,
    InvalidArgument,
    InvalidTopic,
    MalformedEvent,
    PayloadTooLarge,
    RegistrationError,
    StoreFull,
    TidingsError,
    Undecryptable,
    UnknownEventType,
)
from tidings.ports import ANY, NO_STREAM, DeadLetter, EventStore
from tidings.runtime.context import Context
from tidings.runtime.encryption import Encryption
from tidings.runtime.key_admin import Rotation
from tidings.runtime.master_key import LocalMasterKey, MasterKey
from tidings.runtime.projection import Projection, View
from tidings.runtime.retries import Retry

__all__ = [
    "ANY",
    "NO_STREAM",
    "AccessDenied",
    "Aggregate",
    "AggregateNotFound",
    "App",
    "BackendUnavailable",
    "ConcurrencyError",
    "ConfigurationError",
    "Context",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterState",
    "Encryption",
    "Envelope",
    "Erased",
    "Event",
    "EventRegistry",
    "EventStore",
    "IntegrityError",
    "IntegrityReport",
    "InvalidArgument",
    "InvalidTopic",
    "LocalMasterKey",
    "MalformedEvent",
    "MasterKey",
    "PayloadTooLarge",
    "Policy",
    "Principal",
    "Projection",
    "RecordedEvent",
    "RegistrationError",
    "Retry",
    "Rotation",
    "Saga",
    "SagaData",
    "SagaInstance",
    "SecurityDenied",
    "StoreFull",
    "Stored",
    "TidingsError",
    "Undecryptable",
    "UnknownEventType",
    "VerifiedState",
    "View",
]
