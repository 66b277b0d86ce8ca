"""``tidings doctor`` on real SQLite files, key files and App modules: each test plants one
misconfiguration and sees the doctor find it (the engines' servers: ``tests/integration``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidings import App
from tidings.adapters.sqlite.doctor import examine_connection
from tidings.cli import app as cli
from tidings.domain.findings import Level
from tidings.testing.conformance.events import Ping


def doctor(*args: str) -> tuple[int, list[dict[str, str]]]:
    """``tidings doctor ... --format json``: its exit code and its findings."""
    result = CliRunner().invoke(cli, ["doctor", *args, "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    findings: list[dict[str, str]] = json.loads(result.stdout) if result.stdout.strip() else []
    return result.exit_code, findings


def checks(findings: list[dict[str, str]], level: str | None = None) -> set[str]:
    return {f["check"] for f in findings if level is None or f["level"] == level}


def made_store(directory: Path, *, publish: bool = False) -> str:
    """A store that an App made (as tidings makes it: owner-only, WAL), in its own directory."""
    directory.mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{directory / 'store.db'}"

    async def make() -> None:
        async with App("doctor", store=url) as app:
            if publish:
                await app.publish(Ping(key="k", n=1), key="k")

    asyncio.run(make())
    return url


def test_a_store_as_tidings_makes_it_has_nothing_to_fix(tmp_path: Path) -> None:
    code, findings = doctor("--store", made_store(tmp_path / "s"))
    assert code == 0
    # Encryption is off: said, at the lowest level.
    assert [(f["check"], f["level"]) for f in findings] == [("encryption", "info")]
    assert all(set(f) == {"check", "level", "found", "why", "fix"} for f in findings)
    assert all(f["found"] and f["why"] and f["fix"] for f in findings)
    assert doctor("--store", made_store(tmp_path / "s"), "--fail-on", "info")[0] == 1


def test_the_text_says_each_finding_with_why_and_fix(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    (tmp_path / "s" / "store.db").chmod(0o644)
    result = CliRunner().invoke(cli, ["doctor", "--store", url + "?synchronous=NORMAL"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ERROR   sqlite.file_mode: store.db, store.db-wal, store.db-shm: mode 644")
    assert lines[1].strip().startswith("why: ") and lines[2].strip().startswith("fix: `chmod 600 store.db ")
    assert any(line.startswith("WARNING sqlite.synchronous:") for line in lines)
    assert lines[-1] == "1 error, 1 warning, 1 info"


def test_a_file_others_may_read_is_an_error(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    (tmp_path / "s" / "store.db").chmod(0o644)
    code, findings = doctor("--store", url)
    assert code == 1
    (finding,) = [f for f in findings if f["check"] == "sqlite.file_mode"]
    assert finding["level"] == "error"
    assert finding["found"].startswith("store.db, store.db-wal, store.db-shm: mode 644")


def test_a_file_its_group_may_read_is_a_warning(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    (tmp_path / "s" / "store.db").chmod(0o640)
    code, findings = doctor("--store", url)
    assert code == 0
    assert "sqlite.file_mode" in checks(findings, "warning")
    assert doctor("--store", url, "--fail-on", "warning")[0] == 1


def test_a_directory_anyone_may_write_is_an_error(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    (tmp_path / "s").chmod(0o777)
    code, findings = doctor("--store", url)
    assert code == 1
    assert "sqlite.directory_mode" in checks(findings, "error")


def test_a_rollback_journal_is_found(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "store.db") as connection:
        assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    connection.close()
    code, findings = doctor("--store", url, "--fail-on", "warning")
    assert code == 1
    (finding,) = [f for f in findings if f["check"] == "sqlite.journal_mode"]
    assert finding["level"] == "warning"
    assert "delete" in finding["found"]


def test_synchronous_normal_in_the_url_is_a_warning(tmp_path: Path) -> None:
    url = made_store(tmp_path / "s")
    code, findings = doctor("--store", url + "?synchronous=NORMAL")
    assert code == 0
    assert "sqlite.synchronous" in checks(findings, "warning")
    assert "sqlite.synchronous" not in checks(doctor("--store", url)[1])


def test_synchronous_off_on_a_connection_is_an_error(tmp_path: Path) -> None:
    """``synchronous`` is a connection's setting, never stored in the file, and a tidings URL
    cannot ask for OFF: the doctor's check of a connection is given one set so."""
    made_store(tmp_path / "s")
    connection = sqlite3.connect(tmp_path / "s" / "store.db")
    try:
        connection.execute("PRAGMA synchronous=OFF")
        findings = examine_connection(connection)
        connection.execute("PRAGMA synchronous=FULL")
        assert examine_connection(connection) == []
    finally:
        connection.close()
    assert [(f.check, f.level) for f in findings] == [("sqlite.synchronous", Level.ERROR)]


def _key_file(path: Path, mode: int) -> Path:
    path.write_text(f"1:{base64.b64encode(os.urandom(32)).decode()}\n")
    path.chmod(mode)
    return path


def test_a_key_file_others_may_read_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = made_store(tmp_path / "s")
    monkeypatch.setenv("TIDINGS_MASTER_KEY_FILE", str(_key_file(tmp_path / "master.key", 0o644)))
    code, findings = doctor("--store", url)
    assert code == 1
    (finding,) = [f for f in findings if f["check"] == "encryption.key_file"]
    assert finding["level"] == "error"
    assert "644" in finding["found"]
    (tmp_path / "master.key").chmod(0o600)
    code, findings = doctor("--store", url)
    assert code == 0
    assert not checks(findings) & {"encryption.key_file", "encryption"}


def test_a_sealed_store_without_its_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_MASTER_KEY_FILE", str(_key_file(tmp_path / "master.key", 0o600)))
    url = made_store(tmp_path / "s", publish=True)
    assert doctor("--store", url)[0] == 0
    monkeypatch.delenv("TIDINGS_MASTER_KEY_FILE")
    code, findings = doctor("--store", url)
    assert code == 1
    assert checks(findings, "error") == {"encryption.sealed_without_key"}


def _app_module(directory: Path, policy: str, body: str) -> str:
    """An App module (and its policy file) in ``directory``; returns ``module:app``."""
    name = f"doctor_app_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.toml").write_text(textwrap.dedent(policy))
    source = f"""\
        from tidings import App
        from tidings.testing.conformance.sagas import fulfilment

        app = App("shop", policy={str(directory / f"{name}.toml")!r}, principal="shop")
        """
    (directory / f"{name}.py").write_text(textwrap.dedent(source) + textwrap.dedent(body))
    return f"{name}:app"


SAGA_READS = '"conformance.order.placed", "conformance.stock.*", "conformance.payment.*", '
SAGA_READS += '"conformance.shipping.*", "tidings.saga.timeout"'


def test_a_saga_its_policy_does_not_let_append_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = made_store(tmp_path / "s")
    policy = f"""\
        [principals.shop]
        publish = ["conformance.>"]
        subscribe = [{SAGA_READS}]
        """
    target = _app_module(tmp_path, policy, 'app.add_saga(fulfilment("fulfil"))\n')
    code, findings = doctor("--store", url, "--app", target)
    assert code == 1
    (finding,) = [f for f in findings if f["level"] == "error"]
    assert finding["check"] == "policy.sagas"
    assert "tidings.saga.started" in finding["found"]
    allowed = policy.replace('publish = ["conformance.>"]', 'publish = ["conformance.>", "tidings.saga.>"]')
    code, findings = doctor(
        "--store", url, "--app", _app_module(tmp_path, allowed, "app.add_saga(fulfilment('f'))\n")
    )
    assert code == 0
    assert not checks(findings) & {"policy", "policy.sagas", "app"}


def test_a_group_its_policy_does_not_cover_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The App refuses the group as its module is imported: the doctor says so, as a finding."""
    monkeypatch.chdir(tmp_path)
    url = made_store(tmp_path / "s")
    policy = """\
        [principals.shop]
        subscribe = ["conformance.bus.*"]
        """
    body = """\
        @app.subscribe("conformance.>", group="everything")
        async def handle(event: object, ctx: object) -> None:
            pass
        """
    code, findings = doctor("--store", url, "--app", _app_module(tmp_path, policy, body))
    assert code == 1
    (finding,) = [f for f in findings if f["level"] == "error"]
    assert finding["check"] == "app"
    assert "conformance.>" in finding["found"]
    covered = body.replace('"conformance.>"', '"conformance.bus.ping"')
    code, findings = doctor("--store", url, "--app", _app_module(tmp_path, policy, covered))
    assert code == 0
    assert not checks(findings, "error")


def test_an_app_without_a_policy_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = made_store(tmp_path / "s")
    name = f"doctor_bare_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(f"from tidings import App\napp = App('bare', store={url!r})\n")
    # The App's own store is the one examined when --store is not given.
    code, findings = doctor("--app", name)
    assert code == 0
    assert checks(findings) == {"policy", "encryption"}


def test_what_cannot_be_examined_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ["--store", f"sqlite:///{tmp_path / 'missing.db'}"],
        ["--store", "mysql://somewhere/db"],
        ["--store", made_store(tmp_path / "s"), "--fail-on", "fatal"],
        ["--store", made_store(tmp_path / "s"), "--format", "yaml"],
        ["--store", made_store(tmp_path / "s"), "--bus", "kafka://localhost:9092"],
        ["--app", "no_such_module_here:app"],
    ):
        result = CliRunner().invoke(cli, ["doctor", *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), (args, result.stderr)
        assert "Traceback" not in result.output
