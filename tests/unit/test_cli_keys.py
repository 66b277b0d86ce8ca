"""``tidings keys`` and the CLI on an encrypted store, against real SQLite files."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tidings
from tests.unit.test_cli import tidings_cli
from tidings.cli import app
from tidings.domain.saga import SagaInstance
from tidings.runtime.encryption import Encryption
from tidings.runtime.master_key import ENV_KEY, ENV_KEY_FILE, LocalMasterKey
from tidings.testing.conformance.sagas import OrderPlaced, Shop, fulfilment
from tidings.testing.eventually import eventually


class KeyNoted(tidings.Event, topic="clitest.key.noted", type="CliTestKeyNoted"):
    text: str


@pytest.fixture(autouse=True)
def _no_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    monkeypatch.delenv("TIDINGS_STORE", raising=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    result = tidings_cli("keys", "init", str(path))
    assert result.exit_code == 0, result.output
    return path


def write(url: str, key_file: Path, entries: list[tuple[str, str]]) -> None:
    async def append() -> None:
        master = LocalMasterKey.from_file(key_file)
        async with tidings.App("cli-keys", store=url, encryption=Encryption(master_key=master)) as app:
            for stream, text in entries:
                await app.append(stream, [KeyNoted(text=text)])

    asyncio.run(append())


def test_init_writes_an_owner_only_key_file_and_never_prints_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    result = tidings_cli("keys", "init", str(path))
    assert result.exit_code == 0 and path.stat().st_mode & 0o777 == 0o600
    version, key = path.read_text().strip().split(":")
    assert version == "1" and len(base64.b64decode(key)) == 32
    assert key not in result.output
    again = tidings_cli("keys", "init", str(path))
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert path.read_text().strip() == f"1:{key}"


def test_a_key_file_others_may_read_is_refused(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    write(url, key_file, [("note-1", "one")])
    key_file.chmod(0o644)
    for command in (["events", "note-1"], ["keys", "rotate"]):
        result = tidings_cli(*command, "--store", url, env={ENV_KEY_FILE: str(key_file)})
        assert result.exit_code == 2 and "chmod 600" in result.output, result.output
        assert key_file.read_text().split(":")[1].strip() not in result.output


def test_events_show_opened_with_the_key_and_sealed_without(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    write(url, key_file, [("note-1", "visible with the key")])
    with_key = tidings_cli("events", "note-1", "--store", url, env={ENV_KEY_FILE: str(key_file)})
    assert "visible with the key" in with_key.output
    without = tidings_cli("events", "note-1", "--store", url)
    assert "visible" not in without.output and "application/vnd.tidings.sealed" in without.output


def test_list_rotate_and_shred(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    write(url, key_file, [("note-1", "first-note-text"), ("note-2", "second-note-text")])
    env: dict[str, str | None] = {ENV_KEY_FILE: str(key_file)}
    listed = tidings_cli("keys", "list", "--store", url, env=env)
    assert listed.exit_code == 0 and "note-1" in listed.output and "note-2" in listed.output
    wrapped = sqlite3.connect(f"{tmp_path}/x.db").execute("SELECT wrapped FROM tidings_keys").fetchall()
    assert all(base64.b64encode(w).decode() not in listed.output for (w,) in wrapped)

    rotated = tidings_cli("keys", "rotate", "--store", url, env=env)
    assert rotated.exit_code == 0, rotated.output
    assert "master key version 2: 2 data keys rewrapped" in rotated.output
    assert [line.split(":")[0] for line in key_file.read_text().split()] == ["1", "2"]
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "first-note-text" not in rotated.output
    assert "first-note-text" in tidings_cli("events", "note-1", "--store", url, env=env).output

    shredded = tidings_cli("keys", "shred", "note-1", "--yes", "--store", url, env=env)
    assert shredded.exit_code == 0 and "shredded 1" in shredded.output
    erased = tidings_cli("events", "note-1", "--store", url, env=env).output
    assert "<erased" in erased and "first-note-text" not in erased
    assert "second-note-text" in tidings_cli("events", "note-2", "--store", url, env=env).output
    again = tidings_cli("keys", "shred", "note-1", "--yes", "--store", url, env=env)
    assert again.exit_code == 2 and "no live data key" in again.output
    declined = CliRunner().invoke(app, ["keys", "shred", "note-2", "--store", url], input="n\n", env=env)
    assert declined.exit_code == 1
    assert "second-note-text" in tidings_cli("events", "note-2", "--store", url, env=env).output


def test_shred_tells_a_stream_named_like_a_topic_from_the_topic(key_file: Path, tmp_path: Path) -> None:
    """``keys shred topic:<topic>`` shreds the stream of that name; the topic's unkeyed events
    are shredded with ``--topic`` (they used to share one key)."""
    url = f"sqlite:///{tmp_path}/x.db"
    lookalike = f"topic:{KeyNoted.__event_topic__}"
    write(url, key_file, [(lookalike, "stream-note-text")])

    async def publish_unkeyed() -> str:
        master = LocalMasterKey.from_file(key_file)
        async with tidings.App("cli-keys", store=url, encryption=Encryption(master_key=master)) as app:
            return (await app.publish(KeyNoted(text="unkeyed-note-text"))).stream

    unkeyed = asyncio.run(publish_unkeyed())
    env: dict[str, str | None] = {ENV_KEY_FILE: str(key_file)}
    listed = tidings_cli("keys", "list", "--store", url, env=env).output
    assert f"{lookalike} (stream)" in listed and "\x1f" not in listed
    shredded = tidings_cli("keys", "shred", lookalike, "--yes", "--store", url, env=env)
    assert shredded.exit_code == 0 and f"shredded 1 data key version(s) of '{lookalike}'" in shredded.output
    assert "stream-note-text" not in tidings_cli("events", lookalike, "--store", url, env=env).output
    assert "unkeyed-note-text" in tidings_cli("events", unkeyed, "--store", url, env=env).output
    name = KeyNoted.__event_topic__
    topic = tidings_cli("keys", "shred", "--topic", name, "--yes", "--store", url, env=env)
    assert topic.exit_code == 0 and "of the unkeyed events of topic" in topic.output
    assert "unkeyed-note-text" not in tidings_cli("events", unkeyed, "--store", url, env=env).output
    neither = tidings_cli("keys", "shred", "--yes", "--store", url, env=env)
    assert neither.exit_code == 2 and "name a scope" in neither.output
    both = tidings_cli("keys", "shred", "x", "--topic", "a.b", "--yes", "--store", url, env=env)
    assert both.exit_code == 2 and "not both" in both.output


def test_dlq_show_opens_a_sealed_letter_only_with_the_key(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"

    async def dead_letter() -> None:
        master = LocalMasterKey.from_file(key_file)
        app = tidings.App("cli-keys", store=url, encryption=Encryption(master_key=master))

        @app.subscribe("clitest.key.*", group="refusers", retry=tidings.Retry(attempts=1))
        async def refuse(event: KeyNoted, ctx: tidings.Context) -> None:
            raise RuntimeError("refused")

        async with app, app.running(poll=0.05):
            await app.publish(KeyNoted(text="dead-letter-secret"), key="note-9")
            for _ in range(200):
                if await app.dead_letters("refusers"):
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("no dead letter")

    asyncio.run(dead_letter())
    # Not through tidings_cli: a dead letter's traceback is part of what `dlq show` shows.
    runner = CliRunner()
    shown = runner.invoke(app, ["dlq", "show", "1", "--store", url], env={ENV_KEY_FILE: str(key_file)})
    assert shown.exit_code == 0 and "dead-letter-secret" in shown.output
    hidden = runner.invoke(app, ["dlq", "show", "1", "--store", url])
    assert hidden.exit_code == 0 and "dead-letter-secret" not in hidden.output and "refused" in hidden.output


def key_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """``keys list`` as {(scope, version): the other columns}."""
    rows = [line.split() for line in output.splitlines()[1:]]
    return {(row[0], row[1]): row[2:] for row in rows}


def test_list_shows_retired_versions_as_retired(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    env: dict[str, str | None] = {ENV_KEY_FILE: str(key_file)}
    write(url, key_file, [("note-1", "one"), ("note-2", "two")])
    assert tidings_cli("keys", "rotate", "--store", url, env=env).exit_code == 0
    rows = key_rows(tidings_cli("keys", "list", "--store", url, env=env).stdout)
    # A rotation keeps no count of a version's uses: none is shown (never the marker it leaves).
    assert rows[("note-1", "1")][1] == "-" and rows[("note-1", "1")][-1] == "retired"
    write(url, key_file, [("note-1", "three")])  # a new version takes over note-1
    listed = tidings_cli("keys", "list", "--store", url, env=env)
    assert "4,611,686,018,427,387,904" not in listed.stdout
    rows = key_rows(listed.stdout)
    assert rows[("note-1", "1")][-1] == "retired" and rows[("note-1", "2")][-1] == "live"
    assert rows[("note-2", "1")][-1] == "retired"
    # Cut after note-1 version 1, the listing still knows that version 2 took over.
    assert key_rows(tidings_cli("keys", "list", "--limit", "1", "--store", url, env=env).stdout) == {
        ("note-1", "1"): rows[("note-1", "1")]
    }
    assert tidings_cli("keys", "shred", "note-2", "--yes", "--store", url, env=env).exit_code == 0
    rows = key_rows(tidings_cli("keys", "list", "--store", url, env=env).stdout)
    assert rows[("note-2", "1")][-1] == "shredded"


async def _sealed_shop(url: str, key_file: Path) -> str:
    """An encrypted store with a completed saga, a dead letter and a correlation to trace."""
    app = tidings.App("shop", store=url, encryption=Encryption(master_key=LocalMasterKey.from_file(key_file)))
    Shop(app)
    app.add_saga(fulfilment("sealed"))

    @app.subscribe("clitest.key.*", group="refusers", retry=tidings.Retry(attempts=1))
    async def refuse(event: KeyNoted, ctx: tidings.Context) -> None:
        raise RuntimeError("refused")

    async with app, app.running(lease_ttl=2.0, poll=0.05):
        await app.publish(OrderPlaced(order_id="fine", amount=5), key="fine")
        await app.publish(KeyNoted(text="sealed-secret"), key="note-9", correlation_id="journey-9")

        async def settled() -> bool:
            try:
                instance = await app.load(SagaInstance, "sealed:fine")
            except tidings.AggregateNotFound:
                return False
            return instance.status == "completed" and len(await app.dead_letters("refusers")) == 1

        await eventually(settled, within=20)
    return "sealed:fine"


def test_read_commands_show_sealed_sizes_without_the_key(key_file: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    instance = asyncio.run(_sealed_shop(url, key_file))
    reads = [
        ["streams"],
        ["events", "note-9"],
        ["events", "note-9", "--json"],
        ["log"],
        ["log", "--json"],
        ["dlq", "list"],
        ["dlq", "show", "1"],
        ["sagas", "list"],
        ["sagas", "show", instance],
        ["trace", "journey-9"],
    ]
    for command in reads:
        # Not through tidings_cli: a dead letter's traceback is part of what `dlq show` shows.
        result = CliRunner().invoke(app, [*command, "--store", url])
        assert result.exit_code == 0, (command, result.output)
        assert result.stderr == "" and "sealed-secret" not in result.stdout, (command, result.output)
    sealed = "bytes of application/vnd.tidings.sealed"
    assert sealed in tidings_cli("events", "note-9", "--store", url).stdout
    listing = tidings_cli("sagas", "list", "--store", url).stdout
    assert f"{instance} " in listing and "sealed" in listing and "completed" not in listing
    shown = tidings_cli("sagas", "show", instance, "--store", url).stdout
    assert "tidings.SagaStarted <" in shown and sealed in shown
    # Asked for a state, sealed instances are left out, and the note says so.
    completed = tidings_cli("sagas", "list", "--state", "completed", "--store", url)
    assert completed.exit_code == 0 and instance not in completed.stdout
    assert "1 sealed instance(s) left out" in completed.stderr
    # The state the listing shows for them can be asked for: it lists them, and nothing is left out.
    only_sealed = tidings_cli("sagas", "list", "--state", "sealed", "--store", url)
    assert only_sealed.exit_code == 0 and f"{instance} " in only_sealed.stdout, only_sealed.output
    assert "left out" not in only_sealed.stderr
    # With the key, the same commands open the data.
    env: dict[str, str | None] = {ENV_KEY_FILE: str(key_file)}
    opened = tidings_cli("sagas", "list", "--state", "completed", "--store", url, env=env)
    assert opened.exit_code == 0 and instance in opened.stdout
    none_sealed = tidings_cli("sagas", "list", "--state", "sealed", "--store", url, env=env)
    assert instance not in none_sealed.stdout and "no saga instances in state 'sealed'" in none_sealed.stderr
    assert "sealed-secret" in tidings_cli("events", "note-9", "--store", url, env=env).stdout


def test_rotate_with_nothing_to_rotate_fails_and_a_wrong_store_leaves_the_key_file(
    key_file: Path, tmp_path: Path
) -> None:
    before = key_file.read_text()
    missing = tidings_cli(
        "keys", "rotate", "--store", f"sqlite:///{tmp_path}/none.db", "--key-file", str(key_file)
    )
    assert missing.exit_code == 2 and "no tidings store at" in missing.stderr
    assert key_file.read_text() == before
    url = f"sqlite:///{tmp_path}/x.db"
    key = before.strip()  # "1:<key>": the same master key, given in the environment
    asyncio.run(_create(url))  # a store, no data keys yet
    env: dict[str, str | None] = {ENV_KEY: key}
    empty = tidings_cli("keys", "rotate", "--store", url, env=env)
    assert empty.exit_code == 2 and "no data keys in this store: nothing to rotate" in empty.stderr
    write(url, key_file, [("note-1", "one")])
    assert tidings_cli("keys", "rotate", "--store", url, env=env).exit_code == 0  # retires version 1
    again = tidings_cli("keys", "rotate", "--store", url, env=env)
    assert again.exit_code == 2
    assert "nothing to rotate: every data key is wrapped by master key version 1 and retired" in again.stderr
    assert tidings_cli("keys", "rotate", "--store", url, "--key-file", str(key_file)).exit_code == 0


async def _create(url: str) -> None:
    async with tidings.App("empty", store=url):
        pass
