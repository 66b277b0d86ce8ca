"""The keyring's table in the SQL stores: data keys, each wrapped by a version of the master key.

A row is one version of one scope's data key. The store never sees a key in the clear: it keeps
what the runtime wrapped, the master-key version that wrapped it, and how many encryptions have
been reserved with it (the runtime moves to a new version well before AES-GCM's limit for random
nonces). Shredding a scope replaces its wrapped keys with NULL: whatever they sealed can never be
opened again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from tidings.adapters.sql.rows import from_micros
from tidings.ports import DataKeyRecord

_COLUMNS = "scope, version, master_version, wrapped, uses, created_us"


def key_tables(*, bigint: str, blob: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS tidings_keys (
            scope TEXT NOT NULL,
            version INTEGER NOT NULL,
            master_version INTEGER NOT NULL,
            wrapped {blob},
            uses {bigint} NOT NULL,
            created_us {bigint} NOT NULL,
            PRIMARY KEY (scope, version)
        )""",
    )


#: The use count that retires a data key version: no reservation fits under any limit, so the
#: next encryption in its scope makes a new version (``tidings keys rotate`` retires them all).
RETIRED = 2**62


class KeySql(NamedTuple):
    newest: str
    exact: str
    add: str
    reserve: str
    of_scopes: str
    page: str
    rewrap: str
    shred: str
    retire: str

    @classmethod
    def dialect(cls, m: str, scopes: str) -> KeySql:
        """``scopes`` is the condition that matches a list of scopes (``= ANY(%s)`` or ``IN``)."""
        return cls(
            newest=f"SELECT {_COLUMNS} FROM tidings_keys WHERE scope = {m} ORDER BY version DESC LIMIT 1",
            exact=f"SELECT {_COLUMNS} FROM tidings_keys WHERE scope = {m} AND version = {m}",
            add=(
                f"INSERT INTO tidings_keys ({_COLUMNS}) VALUES ({m}, {m}, {m}, {m}, {m}, {m})"
                " ON CONFLICT (scope, version) DO NOTHING"
            ),
            reserve=(
                f"UPDATE tidings_keys SET uses = uses + {m} WHERE scope = {m} AND version = {m}"
                f" AND wrapped IS NOT NULL AND uses + {m} <= {m} RETURNING uses"
            ),
            of_scopes=f"SELECT {_COLUMNS} FROM tidings_keys WHERE scope {scopes}",
            page=(
                f"SELECT {_COLUMNS} FROM tidings_keys WHERE (scope, version) > ({m}, {m})"
                f" ORDER BY scope, version LIMIT {m}"
            ),
            rewrap=(
                f"UPDATE tidings_keys SET master_version = {m}, wrapped = {m}"
                f" WHERE scope = {m} AND version = {m} AND master_version = {m} AND wrapped IS NOT NULL"
            ),
            shred=f"UPDATE tidings_keys SET wrapped = NULL WHERE scope = {m} AND wrapped IS NOT NULL",
            retire=f"UPDATE tidings_keys SET uses = {RETIRED} WHERE wrapped IS NOT NULL AND uses < {RETIRED}",
        )


def key_row(record: DataKeyRecord, created_us: int) -> tuple[Any, ...]:
    return (record.scope, record.version, record.master_version, record.wrapped, record.uses, created_us)


def keys_of(rows: Sequence[Sequence[Any]]) -> list[DataKeyRecord]:
    return [
        DataKeyRecord(
            scope=scope,
            version=version,
            master_version=master_version,
            wrapped=None if wrapped is None else bytes(wrapped),
            uses=uses,
            created=from_micros(created_us),
        )
        for scope, version, master_version, wrapped, uses, created_us in rows
    ]
