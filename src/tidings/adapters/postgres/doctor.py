"""What the durability doctor asks a PostgreSQL store: the server settings that decide whether an
acknowledged commit survives a crash (``fsync``, ``synchronous_commit``, ``full_page_writes``),
and whether this connection is encrypted.

The settings are read on a connection made with the store's own URL, so they are the ones its
connections get (``synchronous_commit`` may be set per role or per database).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tidings.adapters.postgres.settings import PostgresSettings
from tidings.domain.findings import Finding, Level
from tidings.errors import BackendUnavailable

_VERIFYING_MODES = ("verify-ca", "verify-full")
_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "synchronous_standby_names")


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the doctor reads on a connection made with the store's URL."""

    settings: dict[str, str]  # by name, as SHOW gives them
    tls: bool  # this connection's, from pg_stat_ssl
    host: str  # as libpq connected: a name, an address, or a Unix socket's directory


async def read_server(settings: PostgresSettings) -> ServerFacts:
    """The settings that decide durability, and whether this very connection uses TLS."""
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.conninfo, connect_timeout=max(1, round(settings.connect_timeout)), autocommit=True
        ) as connection:
            shown = {}
            for name in _SETTINGS:
                row = await (await connection.execute(f"SHOW {name}")).fetchone()
                shown[name] = str(row[0]) if row else ""
            cursor = await connection.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            row = await cursor.fetchone()
            return ServerFacts(shown, bool(row and row[0]), connection.info.host)
    except psycopg.Error as exc:
        raise BackendUnavailable(f"PostgreSQL at {settings.display_url}: {exc}") from None


async def examine_postgres(settings: PostgresSettings) -> list[Finding]:
    """The findings about the server and the connection that ``settings`` name."""
    facts = await read_server(settings)
    findings = _settings_findings(facts.settings)
    if finding := _tls_finding(facts.tls, facts.host, conninfo_to_dict(settings.conninfo)):
        findings.append(finding)
    return findings


def _settings_findings(shown: dict[str, str]) -> list[Finding]:
    findings: list[Finding] = []
    if shown["fsync"] == "off":
        findings.append(
            Finding(
                "postgres.fsync",
                Level.ERROR,
                "fsync is off",
                "the server never makes sure a write reached the disk: a power loss or an OS crash "
                "may lose acknowledged events and leave the database corrupt beyond repair",
                "set fsync = on in postgresql.conf and reload (never turn it off outside a throwaway server)",
            )
        )
    if shown["full_page_writes"] == "off":
        findings.append(
            Finding(
                "postgres.full_page_writes",
                Level.ERROR,
                "full_page_writes is off",
                "a page torn by a power loss in the middle of its write cannot be repaired from the "
                "WAL: the table or index it belongs to, the log of events among them, is corrupt",
                "set full_page_writes = on (unless the file system guarantees atomic page writes, "
                "as ZFS does) and reload",
            )
        )
    commit = shown["synchronous_commit"]
    if commit == "off":
        findings.append(
            Finding(
                "postgres.synchronous_commit",
                Level.WARNING,
                "synchronous_commit is off",
                "a commit is acknowledged before its WAL reaches the disk: a server crash loses the "
                "events of the last moments (up to three times wal_writer_delay, 600 ms by default) "
                "that appends and handlers were told were stored; the database stays consistent",
                "set synchronous_commit = on (server, role or database: ALTER ROLE ... SET "
                "synchronous_commit = on)",
            )
        )
    elif commit == "local" and shown["synchronous_standby_names"]:
        findings.append(
            Finding(
                "postgres.synchronous_commit",
                Level.WARNING,
                "synchronous_commit is local, with synchronous standbys configured",
                "a commit waits for the primary's disk but not for the standbys: a failover to a "
                "standby loses the events acknowledged just before it",
                "set synchronous_commit = on (or remote_apply) so that commits wait for the standbys",
            )
        )
    return findings


def _tls_finding(tls: bool, host: str, options: dict[str, Any]) -> Finding | None:
    if not tls:
        if host.startswith("/") or _is_loopback(host):
            return None  # a Unix socket or this machine: nothing crosses a network
        return Finding(
            "postgres.tls",
            Level.WARNING,
            f"the connection to {host} is not encrypted (no TLS)",
            "the password and every event (with encryption off, their data too) cross the network "
            "in clear, for anyone on the path to read or alter",
            "enable ssl on the server and add ?sslmode=verify-full&sslrootcert=CA to the store URL",
        )
    mode = str(options.get("sslmode") or os.environ.get("PGSSLMODE") or "")
    if mode not in _VERIFYING_MODES and not (host.startswith("/") or _is_loopback(host)):
        return Finding(
            "postgres.tls",
            Level.INFO,
            f"the connection to {host} is encrypted but the server is not verified (sslmode "
            f"{mode or 'prefer'})",
            "one who can redirect the connection can pose as the server and read everything",
            "add ?sslmode=verify-full&sslrootcert=CA to the store URL",
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
