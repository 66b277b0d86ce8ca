"""What ``tidings doctor`` reports: one finding per thing found that would lose or expose data,
with what was found, why it matters, and the fix.

Pure data: the checks that make findings are the runtime's, and for what only an engine can tell
(a SQLite pragma, a PostgreSQL setting, a JetStream stream's storage) its adapter's.
"""

from __future__ import annotations

import enum

import msgspec


class Level(enum.Enum):
    """How bad a finding is; ``at_least`` orders them (info < warning < error)."""

    INFO = "info"  # worth knowing; nothing is at risk as things stand
    WARNING = "warning"  # data may be lost or exposed in a failure that is rare, or by a choice
    ERROR = "error"  # data will be lost or exposed in an ordinary failure, or is exposed already

    def at_least(self, other: Level) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Level.INFO: 0, Level.WARNING: 1, Level.ERROR: 2}


class Finding(msgspec.Struct, frozen=True):
    """One finding: ``check`` names what was checked (``sqlite.synchronous``), ``found`` what is
    there, ``why`` what would be lost or exposed, ``fix`` how to set it right."""

    check: str
    level: Level
    found: str
    why: str
    fix: str
