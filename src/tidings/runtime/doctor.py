"""The durability doctor's own checks, those that need no engine: encryption (on or off, the
key file's mode, a store sealed with a key that is not given) and an App's coverage by its
access policy. The engines' checks are beside their adapters (``adapters/<engine>/doctor.py``);
``tidings doctor`` gathers both through the composition root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from tidings.domain.findings import Finding, Level
from tidings.domain.policy import Policy
from tidings.domain.saga import (
    SagaCommandSent,
    SagaEnded,
    SagaReplied,
    SagaStarted,
    SagaTimedOut,
    SagaTimeout,
)
from tidings.domain.topics import AnyOf, Pattern
from tidings.errors import ConfigurationError
from tidings.ports import EventStore
from tidings.runtime.master_key import ENV_KEY, ENV_KEY_FILE, LocalMasterKey

#: What a saga appends and schedules under its principal: each of them passes the access guard.
SAGA_TOPICS = tuple(
    event.__event_topic__
    for event in (SagaStarted, SagaCommandSent, SagaReplied, SagaTimedOut, SagaEnded, SagaTimeout)
)


def master_key_in_environment() -> bool:
    """Whether the environment names a master key (as an App without ``encryption=`` reads it)."""
    return bool(os.environ.get(ENV_KEY) or os.environ.get(ENV_KEY_FILE))


def examine_master_key() -> list[Finding]:
    """The master key the environment names: a key file others may read, a key that cannot be
    read."""
    key_file = os.environ.get(ENV_KEY_FILE)
    if key_file and not os.environ.get(ENV_KEY):
        try:
            mode = stat.S_IMODE(Path(key_file).stat().st_mode)
        except OSError:
            mode = 0  # not there, or not to be looked at: said below as the key's reading fails
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return [
                Finding(
                    "encryption.key_file",
                    Level.ERROR,
                    f"the master key file ({ENV_KEY_FILE}) has mode {mode:o}: group or others may read it",
                    "one who reads the master key opens every data key and so every sealed event, "
                    "on disk, in backups and on the bus; tidings refuses to use such a file",
                    "`chmod 600` the file, and rotate the master key (`tidings keys rotate`) if "
                    "others may have read it",
                )
            ]
    try:
        LocalMasterKey.from_environment()
    except ConfigurationError as exc:
        return [
            Finding(
                "encryption.master_key",
                Level.ERROR,
                f"the master key cannot be used: {exc}",
                "an App with this environment does not start, and no one can open sealed events",
                f"give {ENV_KEY_FILE} an owner-only file that holds the key (or {ENV_KEY} the key)",
            )
        ]
    return []


async def examine_encryption(store: EventStore, *, master_key: bool) -> list[Finding]:
    """Encryption off, and a store whose keyring shows it was sealed while no key is given."""
    if master_key:
        return []
    sealed = bool(await store.key_store.data_key_page(("", 0), 1))
    if sealed:
        return [
            Finding(
                "encryption.sealed_without_key",
                Level.ERROR,
                "the store's keyring holds data keys (an App with a master key wrote here), and no "
                "master key is configured",
                "an App without the key cannot open the sealed events: its groups dead-letter each "
                "as undecryptable, and it writes new events in clear beside them",
                f"give the App the master key that sealed them ({ENV_KEY_FILE} or {ENV_KEY}, or its "
                "encryption=)",
            )
        ]
    return [
        Finding(
            "encryption",
            Level.INFO,
            "encryption is off: event data is stored and sent in clear",
            "whoever reads the database, its backups or the bus reads every event's data",
            f"give the Apps a master key ({ENV_KEY_FILE}: an owner-only file, see `tidings keys`) "
            "to seal the data of new events",
        )
    ]


def examine_coverage(
    policy: Policy | None,
    principal: str,
    groups: Mapping[str, Pattern | AnyOf],
    sagas: Iterable[str],
    *,
    distributed: bool = False,
) -> list[Finding]:
    """Whether the policy lets ``principal`` read every group's pattern and append every saga's
    own events (``None``: no policy), and, on a bus (``distributed``), names a relay."""
    if policy is None:
        return [
            Finding(
                "policy",
                Level.INFO,
                "no access policy: the App may publish and subscribe to every topic",
                "any service that shares the store or the bus reads and writes every topic",
                "give the Apps a policy (policy= or TIDINGS_POLICY; see `tidings acl`)",
            )
        ]
    allowed = policy.principal(principal)
    findings: list[Finding] = []
    if distributed and not any(p.relay for p in policy.principals.values()):
        findings.append(
            Finding(
                "policy.relay",
                Level.WARNING,
                f"{policy.source} marks no principal relay = true",
                "with a policy only an App of a relay principal runs the relay: no event reaches "
                "the bus, and no group that reads it sees one (the store keeps them meanwhile)",
                "mark the principal of one App relay = true",
            )
        )
    for group, pattern in groups.items():
        patterns = pattern.patterns if isinstance(pattern, AnyOf) else (pattern,)
        refused = [p.text for p in patterns if not allowed.may_subscribe(p.text)]
        if refused:
            findings.append(
                Finding(
                    "policy.coverage",
                    Level.ERROR,
                    f"group {group!r} reads {', '.join(refused)}, which {policy.source} does not let "
                    f"principal {principal!r} subscribe to",
                    "the group is refused: the events it is there for are never handled",
                    f"add the patterns to [principals.{principal}] subscribe, or drop the group",
                )
            )
    for saga in sagas:
        refused = [topic for topic in SAGA_TOPICS if not allowed.may_publish(topic)]
        if refused:
            findings.append(
                Finding(
                    "policy.sagas",
                    Level.ERROR,
                    f"saga {saga!r} appends {', '.join(refused)}, which {policy.source} does not let "
                    f"principal {principal!r} publish",
                    "every start of the saga is denied and dead-lettered: no step runs, nothing is "
                    "compensated",
                    f'add "tidings.saga.>" to [principals.{principal}] publish',
                )
            )
    return findings


def refused_app(target: str, error: Exception) -> Finding:
    """The App at ``target`` could not even be made: a subscription its policy denies, or a
    configuration it refuses (both raise as the module is imported)."""
    return Finding(
        "app",
        Level.ERROR,
        f"{target} does not load: {error}",
        "the App does not start, so none of its groups or sagas runs",
        "correct what the error names (the policy, or the App's configuration)",
    )
