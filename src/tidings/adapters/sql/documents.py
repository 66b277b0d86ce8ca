"""Documents and checkpoints in the SQL stores: the same tables and statements on every engine,
but for column types and the parameter marker ``m``.

A document is a value under a key in a collection (a handler's read model, written in its unit of
work); a checkpoint is a named position in the log (a group's, per partition).
"""

from __future__ import annotations

from typing import NamedTuple


def document_tables(*, bigint: str, blob: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE IF NOT EXISTS tidings_checkpoints (
        name TEXT PRIMARY KEY,
        position {bigint} NOT NULL
    )""",
        f"""CREATE TABLE IF NOT EXISTS tidings_documents (
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        value {blob} NOT NULL,
        PRIMARY KEY (collection, key)
    )""",
    )


class DocumentSql(NamedTuple):
    get_document: str
    put_document: str
    delete_document: str
    clear_collection: str
    get_checkpoint: str
    put_checkpoint: str

    @classmethod
    def dialect(cls, m: str) -> DocumentSql:
        return cls(
            get_document=f"SELECT value FROM tidings_documents WHERE collection = {m} AND key = {m}",
            put_document=(
                f"INSERT INTO tidings_documents (collection, key, value) VALUES ({m}, {m}, {m})"
                " ON CONFLICT (collection, key) DO UPDATE SET value = excluded.value"
            ),
            delete_document=f"DELETE FROM tidings_documents WHERE collection = {m} AND key = {m}",
            clear_collection=f"DELETE FROM tidings_documents WHERE collection = {m}",
            get_checkpoint=f"SELECT position FROM tidings_checkpoints WHERE name = {m}",
            put_checkpoint=(
                f"INSERT INTO tidings_checkpoints (name, position) VALUES ({m}, {m})"
                " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
            ),
        )
