"""``tidings doctor`` against real engines: a throwaway PostgreSQL started with a durability
setting turned off, and nats-servers whose streams under tidings' names were made memory-backed,
with one replica on a cluster, with a short duplicate window or a limit that drops events. Each
test plants one misconfiguration and sees the doctor find it; a clean run finds nothing to fix.
(The shared PostgreSQL of the suite is never given these settings.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from typer.testing import CliRunner

from tidings import App
from tidings.adapters.postgres import PostgresSettings
from tidings.adapters.postgres.doctor import _tls_finding, read_server
from tidings.cli import app as cli
from tidings.cli.certs import make_dev_certificates
from tidings.domain.findings import Level
from tidings.testing.nats import nats_servers, open_on_new_cluster
from tidings.testing.plugin import missing
from tidings.testing.postgres_tls import postgres_tls_server
from tidings.testing.servers import EmbeddedServer, embedded_server

PARTITIONS = 2


def doctor(*args: str) -> tuple[int, list[dict[str, str]]]:
    result = CliRunner().invoke(cli, ["doctor", *args, "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 1), result.output
    findings: list[dict[str, str]] = json.loads(result.stdout)
    return result.exit_code, findings


def found(findings: list[dict[str, str]]) -> set[tuple[str, str]]:
    """(check, level) of each finding but the note that encryption is off (no key is given)."""
    return {(f["check"], f["level"]) for f in findings if f["check"] != "encryption"}


# -- PostgreSQL ----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(settings: dict[str, str]) -> Iterator[EmbeddedServer]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(embedded_server(settings=settings))
        except RuntimeError as exc:
            missing(f"no throwaway PostgreSQL: {exc}")
        yield server


def _made_store(url: str) -> str:
    async def make() -> None:
        async with App("doctor", store=url):
            pass

    asyncio.run(make())
    return url


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        (None, None, set()),
        ("fsync", "off", {("postgres.fsync", "error")}),
        ("full_page_writes", "off", {("postgres.full_page_writes", "error")}),
        ("synchronous_commit", "off", {("postgres.synchronous_commit", "warning")}),
    ],
    ids=["clean", "fsync", "full_page_writes", "synchronous_commit"],
)
def test_postgres_settings_that_lose_commits_are_found(
    setting: str | None, value: str | None, expected: set[tuple[str, str]]
) -> None:
    with postgres({setting: value} if setting and value else {}) as server:
        url = _made_store(f"postgresql://{server.user}@127.0.0.1:{server.port}/{server.database}")
        code, findings = doctor("--store", url)
    assert found(findings) == expected
    assert code == (1 if any(level == "error" for _, level in expected) else 0)


@pytest.mark.postgres
def test_the_connection_s_tls_is_read_from_the_server(tmp_path: Path) -> None:
    """``pg_stat_ssl`` of the doctor's own connection, on a server that speaks TLS only and on
    one that speaks none."""
    certificates = make_dev_certificates(tmp_path / "certs", client_name="postgres")
    try:
        tls_server = postgres_tls_server(certificates.server, certificates.server_key, certificates.ca)
        with tls_server as server:
            url = server.url(sslmode="require", sslcert=certificates.client, sslkey=certificates.client_key)
            facts = asyncio.run(read_server(PostgresSettings.from_url(url)))
    except RuntimeError as exc:
        missing(f"no PostgreSQL with TLS: {exc}")
    assert facts.tls is True and facts.host == "127.0.0.1"
    with postgres({}) as plain:
        url = f"postgresql://{plain.user}@127.0.0.1:{plain.port}/{plain.database}"
        assert asyncio.run(read_server(PostgresSettings.from_url(url))).tls is False


def test_no_tls_to_another_host_is_a_warning() -> None:
    """What the check makes of ``pg_stat_ssl``'s answer (the throwaway servers listen on the
    loopback only, where no TLS is needed and none is asked for)."""
    assert _tls_finding(False, "127.0.0.1", {}) is None
    assert _tls_finding(False, "/run/postgresql", {}) is None
    finding = _tls_finding(False, "db.example.com", {})
    assert finding is not None and finding.level is Level.WARNING
    verified = _tls_finding(True, "db.example.com", {"sslmode": "verify-full"})
    assert verified is None
    unverified = _tls_finding(True, "db.example.com", {"sslmode": "require"})
    assert unverified is not None and unverified.level is Level.INFO


# -- JetStream -------------------------------------------------------------------------------------


def _sqlite_store(directory: Path) -> str:
    directory.mkdir(mode=0o700)
    return _made_store(f"sqlite:///{directory / 'store.db'}?partitions={PARTITIONS}")


async def _make_streams(server_url: str, stem: str, prefix: str, **config: Any) -> None:
    """tidings' partition streams as someone else made them (``config`` planted)."""
    client = await nats.connect(server_url)
    try:
        js = client.jetstream()
        for partition in range(PARTITIONS):
            await js.add_stream(
                StreamConfig(name=f"{stem}_{partition}", subjects=[f"{prefix}.{partition}.>"], **config)
            )
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"storage": StorageType.FILE}, set()),
        ({"storage": StorageType.MEMORY}, {("jetstream.storage", "error")}),
        ({"storage": StorageType.FILE, "duplicate_window": 1.0}, {("jetstream.duplicate_window", "warning")}),
        (
            {"storage": StorageType.FILE, "max_msgs": 1000, "discard": DiscardPolicy.OLD},
            {("jetstream.retention", "error")},
        ),
    ],
    ids=["clean", "memory", "duplicate_window", "retention"],
)
def test_jetstream_streams_that_lose_events_are_found(
    tmp_path: Path, config: dict[str, Any], expected: set[tuple[str, str]]
) -> None:
    store = _sqlite_store(tmp_path / "s")
    tag = uuid.uuid4().hex[:8]
    stem, prefix = f"D_{tag}", f"d{tag}"
    with nats_servers(1) as (server,):
        asyncio.run(_make_streams(server.url, stem, prefix, **config))
        code, findings = doctor("--store", store, "--bus", f"{server.url}?stream={stem}&prefix={prefix}")
    assert found(findings) == expected
    # One finding per check, naming every stream it holds for.
    for finding in findings:
        if finding["check"] != "encryption":
            assert f"{stem}_0" in finding["found"] and f"{stem}_1" in finding["found"]
    assert code == (1 if any(level == "error" for _, level in expected) else 0)


def test_streams_not_made_yet_are_said(tmp_path: Path) -> None:
    store = _sqlite_store(tmp_path / "s")
    with nats_servers(1) as (server,):
        code, findings = doctor("--store", store, "--bus", f"{server.url}?stream=NOT_YET")
    assert code == 0
    assert found(findings) == {("jetstream.streams", "info")}


def test_one_replica_on_a_cluster_is_a_warning(tmp_path: Path) -> None:
    """The streams as an App makes them with the bus URL's default, replicas=1, on a cluster."""
    store = _sqlite_store(tmp_path / "s")
    tag = uuid.uuid4().hex[:8]
    with nats_servers(3) as servers:
        bus = f"{servers[0].url}?stream=D_{tag}&prefix=d{tag}"

        async def make_streams() -> None:
            app = App("doctor", store=store, bus=bus)
            await open_on_new_cluster(app)
            await app.close()

        asyncio.run(make_streams())
        code, findings = doctor("--store", store, "--bus", bus, "--fail-on", "warning")
        _, with_replicas = doctor("--store", store, "--bus", bus.replace("?", "?replicas=3&"))
    assert code == 1
    assert found(findings) == {("jetstream.replicas", "warning")}
    (finding,) = [f for f in findings if f["check"] == "jetstream.replicas"]
    assert "3 servers" in finding["found"]
    # The URL's replicas= says what new streams get; the streams as they are are what counts.
    assert found(with_replicas) == {("jetstream.replicas", "warning")}


def test_more_replicas_than_servers_is_an_error(tmp_path: Path) -> None:
    """Streams of three replicas on a cluster that has lost a server."""
    store = _sqlite_store(tmp_path / "s")
    tag = uuid.uuid4().hex[:8]
    with nats_servers(3) as servers:
        bus = f"{servers[0].url}?stream=D_{tag}&prefix=d{tag}&replicas=3"

        async def make_streams() -> None:
            app = App("doctor", store=store, bus=bus)
            await open_on_new_cluster(app)
            await app.close()

        asyncio.run(make_streams())
        assert found(doctor("--store", store, "--bus", bus)[1]) == set()
        servers[2].kill()
        deadline = time.monotonic() + 40
        # The servers left tell their clients of the loss a moment later; the streams whose
        # leader was killed answer once they elected another.
        while True:
            code, findings = doctor("--store", store, "--bus", bus)
            if ("jetstream.replicas", "error") in found(findings) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert code == 1
    assert found(findings) - {("jetstream.leader", "warning")} == {("jetstream.replicas", "error")}
    (finding,) = [f for f in findings if f["check"] == "jetstream.replicas"]
    assert "3 replicas" in finding["found"] and "2 servers" in finding["found"]


def test_streams_without_a_leader_are_said(tmp_path: Path) -> None:
    """Two servers of three killed: the streams' replicas have lost their quorum."""
    store = _sqlite_store(tmp_path / "s")
    tag = uuid.uuid4().hex[:8]
    with nats_servers(3) as servers:
        bus = f"{servers[0].url}?stream=D_{tag}&prefix=d{tag}&replicas=3"

        async def make_streams() -> None:
            app = App("doctor", store=store, bus=bus)
            await open_on_new_cluster(app)
            await app.close()

        asyncio.run(make_streams())
        servers[1].kill()
        servers[2].kill()
        code, findings = doctor("--store", store, "--bus", bus, "--fail-on", "warning")
    assert code == 1
    assert ("jetstream.leader", "warning") in found(findings)
    (finding,) = [f for f in findings if f["check"] == "jetstream.leader"]
    # A leader on the server left may answer a while before it notices it has lost its quorum.
    assert f"D_{tag}_0" in finding["found"] or f"D_{tag}_1" in finding["found"]


def test_a_read_stream_in_memory_is_an_error(tmp_path: Path) -> None:
    """A policy's read stream (``<stream>_<p>_R<principal in hex>_<digest>``) is checked like
    the partition streams it copies."""
    store = _sqlite_store(tmp_path / "s")
    tag = uuid.uuid4().hex[:8]
    stem, prefix = f"D_{tag}", f"d{tag}"
    view = f"{stem}_1_R{b'auditor'.hex()}_0123abcd"
    with nats_servers(1) as (server,):
        asyncio.run(_make_streams(server.url, stem, prefix, storage=StorageType.FILE))

        async def make_view() -> None:
            client = await nats.connect(server.url)
            try:
                await client.jetstream().add_stream(StreamConfig(name=view, storage=StorageType.MEMORY))
            finally:
                await client.close()

        asyncio.run(make_view())
        code, findings = doctor("--store", store, "--bus", f"{server.url}?stream={stem}&prefix={prefix}")
    assert code == 1
    assert found(findings) == {("jetstream.storage", "error")}
    (finding,) = [f for f in findings if f["check"] == "jetstream.storage"]
    assert view in finding["found"] and f"{stem}_0" not in finding["found"]


def test_a_bus_over_tls_is_examined(tmp_path: Path) -> None:
    """The doctor reaches a server that takes TLS with client certificates only, as the bus does
    (the server's name checked against the host of the URL)."""
    certificates = make_dev_certificates(tmp_path / "certs")
    store = _sqlite_store(tmp_path / "s")
    tls = (certificates.server, certificates.server_key, certificates.ca)
    with nats_servers(1, tls=tls) as (server,):
        files = {
            "tls_ca": certificates.ca,
            "tls_cert": certificates.client,
            "tls_key": certificates.client_key,
        }
        query = "&".join(f"{name}={path}" for name, path in files.items())
        code, findings = doctor(
            "--store", store, "--bus", f"tls://127.0.0.1:{server.port}?stream=TLS&{query}"
        )
    assert code == 0
    assert found(findings) == {("jetstream.streams", "info")}


def test_a_policy_that_names_no_relay_on_a_bus_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _sqlite_store(tmp_path / "s")
    monkeypatch.chdir(tmp_path)
    with nats_servers(1) as (server,):
        for relay, expected in (("false", {("policy.relay", "warning")}), ("true", set())):
            name = f"doctor_relay_{relay}_{uuid.uuid4().hex[:8]}"
            (tmp_path / f"{name}.toml").write_text(f"[principals.shop]\nrelay = {relay}\n")
            (tmp_path / f"{name}.py").write_text(
                "from tidings import App\n"
                f"app = App('shop', store={store!r}, bus={server.url + '?stream=NONE'!r}, "
                f"policy={str(tmp_path / (name + '.toml'))!r})\n"
            )
            code, findings = doctor("--app", name, "--fail-on", "warning")
            assert found(findings) - {("jetstream.streams", "info")} == expected, relay
            assert code == (1 if expected else 0)
