"""Access policies: which topics each principal (a service identity) may publish to and which
patterns it may subscribe to. Pure: parsed from TOML text (reading the file is the runtime's).

::

    [principals.orders]
    publish = ["order.>"]                              # topics it may append or publish
    subscribe = ["payment.*", "inventory.reserved"]    # patterns its groups may read
    password = "..."    # or nkey = "U..."; only `tidings acl nats-config` uses them
    relay = true        # it runs the relay that feeds the bus (distributed mode)

Deny by default: a principal may do only what its patterns allow, and a name the policy does not
list may do nothing at all.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from tidings.domain.events import Event
from tidings.domain.topics import compile_pattern, covers
from tidings.errors import ConfigurationError, InvalidTopic

PUBLISH: Final = "publish"
SUBSCRIBE: Final = "subscribe"
_PRINCIPAL_KEYS: Final = ("publish", "subscribe", "password", "nkey", "relay")
# Names that read the same in a NATS config, a log line and an environment variable.
_NAME = re.compile(r"[A-Za-z0-9_.@-]+")
# A public user nkey: 'U', then 55 characters of base32 (what nsc and `nk -gen user` print).
_USER_NKEY = re.compile(r"U[A-Z2-7]{55}")
# A password goes into the bus URL as is (nats-py does not percent-decode it): URL-safe only.
# Or its bcrypt hash, which nats-server takes in its config: then the policy file, which every
# service reads, holds no password that logs in anywhere (each App has its own in its bus URL).
_PASSWORD = re.compile(r"[A-Za-z0-9._~-]+|\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


class SecurityDenied(Event, topic="security.denied", type="tidings.SecurityDenied"):
    """A publish or subscribe that the policy denied. It names who, what and where, and carries
    nothing of the event that was refused (its data may be exactly what must not leak)."""

    principal: str
    operation: str  # "publish" or "subscribe"
    topic: str  # the topic published to, or the pattern subscribed to
    time: datetime


@dataclass(frozen=True)
class Principal:
    """One service identity and what it may do."""

    name: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)  # never in a log line
    nkey: str | None = None  # a public key: safe to show
    relay: bool = False

    def may_publish(self, topic: str) -> bool:
        return any(compile_pattern(allowed).matches(topic) for allowed in self.publish)

    def may_subscribe(self, pattern: str) -> bool:
        """Whether a group may read ``pattern``: every topic it matches must be allowed."""
        return any(covers(allowed, pattern) for allowed in self.subscribe)


@dataclass(frozen=True)
class Policy:
    """The principals of one policy file, by name; ``source`` names the file in every error."""

    principals: Mapping[str, Principal]
    source: str = "policy"

    def principal(self, name: str) -> Principal:
        found = self.principals.get(name)
        if found is None:
            known = ", ".join(sorted(self.principals)) or "none"
            raise ConfigurationError(
                f"{self.source}: unknown principal {name!r} (the policy names: {known}); "
                "an App runs as its principal= or TIDINGS_PRINCIPAL, else as its name"
            )
        return found

    @classmethod
    def from_toml(cls, text: str, source: str = "policy") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], source: str = "policy") -> Policy:
        for key in data:
            if key != "principals":
                raise ConfigurationError(
                    f"{source}: unknown key {key!r} (a policy holds [principals.<name>] tables only)"
                )
        tables = data.get("principals", {})
        if not isinstance(tables, Mapping):
            raise ConfigurationError(f"{source}: principals must be a table of [principals.<name>] tables")
        principals = {name: _principal(source, name, table) for name, table in tables.items()}
        return cls(principals, source)


def _principal(source: str, name: object, table: object) -> Principal:
    where = f"{source}: principal {name!r}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(f"{where}: a name may contain only letters, digits and '_', '.', '@', '-'")
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{where}: expected a table ([principals.{name}]), got {_kind(table)}")
    for key in table:
        if key not in _PRINCIPAL_KEYS:
            raise ConfigurationError(f"{where}: unknown key {key!r} (expected {', '.join(_PRINCIPAL_KEYS)})")
    password, nkey, relay = table.get("password"), table.get("nkey"), table.get("relay", False)
    if password is not None and (not isinstance(password, str) or not _PASSWORD.fullmatch(password)):
        raise ConfigurationError(
            f"{where}: password must be a non-empty string of letters, digits and '-', '.', '_', '~' "
            "(it is written into the bus URL as is), or its bcrypt hash ($2a$...)"
        )
    if nkey is not None and (not isinstance(nkey, str) or not _USER_NKEY.fullmatch(nkey)):
        raise ConfigurationError(f"{where}: nkey must be a public user nkey ('U' and 55 base32 characters)")
    if password is not None and nkey is not None:
        raise ConfigurationError(f"{where}: give a password or an nkey, not both")
    if not isinstance(relay, bool):
        raise ConfigurationError(f"{where}: relay must be true or false, got {_kind(relay)}")
    return Principal(
        name=name,
        publish=_patterns(where, PUBLISH, table.get(PUBLISH, [])),
        subscribe=_patterns(where, SUBSCRIBE, table.get(SUBSCRIBE, [])),
        password=password,
        nkey=nkey,
        relay=relay,
    )


def _patterns(where: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigurationError(
            f'{where}: {key} must be a list of topic patterns (such as ["order.>"]), got {_kind(value)}'
        )
    for item in value:
        if not isinstance(item, str):
            raise ConfigurationError(f"{where}: {key}: {item!r} is not a topic pattern (a string)")
        try:
            compile_pattern(item)
        except InvalidTopic as exc:
            raise ConfigurationError(f"{where}: {key}: {exc}") from None
    return tuple(value)


def _kind(value: object) -> str:
    """The type of a wrong value, never the value: it may be a password in the wrong place."""
    if isinstance(value, dict):
        return f"a table with keys {sorted(map(str, value))[:10]}"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"
