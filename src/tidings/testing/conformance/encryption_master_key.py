"""The master key check, asserted on every backend: an App given a master key that does not
match the store's is refused at open, before it writes anything; rotation records the new
version; a store from before the check records opens with the right key and gets them."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tidings.errors import ConfigurationError
from tidings.runtime.app import App
from tidings.runtime.encryption import Encryption
from tidings.runtime.keyring import CHECK_SCOPE
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.conformance.encryption import Secret, master_key_of, sealed_app
from tidings.testing.conformance.events import unique
from tidings.testing.raw import raw_execute

#: Every table an App open could write to, in a stable order.
_TABLES = (
    "SELECT scope, version, master_version, wrapped, uses FROM tidings_keys ORDER BY scope, version",
    "SELECT position, id, data, hash FROM tidings_events ORDER BY position",
    "SELECT stream, version, hash FROM tidings_streams ORDER BY stream",
    "SELECT key, value FROM tidings_meta ORDER BY key",
    "SELECT name, position FROM tidings_checkpoints ORDER BY name",
    "SELECT collection, key, value FROM tidings_documents ORDER BY collection, key",
)


def store_contents(store_url: str) -> list[list[tuple[Any, ...]]]:
    return [raw_execute(store_url, query) for query in _TABLES]


def checks(store_url: str) -> list[int]:
    """The master key versions that the store has a key check of."""
    rows = raw_execute(
        store_url, "SELECT version FROM tidings_keys WHERE scope = ? ORDER BY version", CHECK_SCOPE
    )
    return [row[0] for row in rows]


def app_with(store_url: str, versions: dict[int, bytes]) -> App:
    return App(
        "keyed", store=store_url, encryption=Encryption(master_key=LocalMasterKey(versions, "test key"))
    )


def refused(version: int) -> str:
    """What refuses a master key whose ``version`` is not the store's."""
    return rf"the master key version {version} given \(test key\) does not match the one this store"


async def test_a_wrong_master_key_is_refused_at_open_before_any_write(store_url: str) -> None:
    stream = unique("s")
    async with sealed_app(store_url) as app:
        await app.append(stream, [Secret(owner="ann", text="hidden")])
    before = store_contents(store_url)
    wrong = app_with(store_url, {1: os.urandom(32)})
    with pytest.raises(ConfigurationError, match=refused(1)):
        await wrong.open()
    with pytest.raises(
        ConfigurationError, match=refused(1)
    ):  # again, and also with a version more that the store never saw
        await app_with(store_url, {1: os.urandom(32), 2: os.urandom(32)}).open()
    assert store_contents(store_url) == before
    async with sealed_app(store_url) as app:  # the right key still opens it
        assert [s.event.text for s in await app.read_stream(stream)] == ["hidden"]  # type: ignore[attr-defined]


async def test_after_a_rotation_both_versions_are_checked(store_url: str) -> None:
    stream = unique("s")
    async with sealed_app(store_url, 1) as app:
        await app.append(stream, [Secret(owner="ann", text="before")])
    async with sealed_app(store_url, 1, 2) as operator:
        await operator.rotate_keys()
        await operator.append(stream, [Secret(owner="ann", text="after")])
    assert checks(store_url) == [1, 2]
    before = store_contents(store_url)
    with pytest.raises(ConfigurationError, match=refused(2)):
        await app_with(store_url, {1: master_key_of(1), 2: os.urandom(32)}).open()
    with pytest.raises(ConfigurationError, match=refused(1)):
        await app_with(store_url, {1: os.urandom(32), 2: master_key_of(2)}).open()
    assert store_contents(store_url) == before
    async with app_with(store_url, {2: master_key_of(2)}) as reader:  # the old version is not needed now
        assert [s.event.text for s in await reader.read_stream(stream)] == ["before", "after"]  # type: ignore[attr-defined]


async def test_a_store_from_before_the_checks_opens_and_gets_its_check(store_url: str) -> None:
    stream = unique("s")
    async with sealed_app(store_url) as app:
        await app.append(stream, [Secret(owner="ann", text="older")])
    raw_execute(store_url, "DELETE FROM tidings_keys WHERE scope = ?", CHECK_SCOPE)  # as before checks
    before = store_contents(store_url)
    with pytest.raises(
        ConfigurationError, match=refused(1)
    ):  # its data keys tell a wrong key all the same, and nothing is recorded
        await app_with(store_url, {1: os.urandom(32)}).open()
    assert store_contents(store_url) == before
    async with sealed_app(store_url) as app:
        assert [s.event.text for s in await app.read_stream(stream)] == ["older"]  # type: ignore[attr-defined]
    assert checks(store_url) == [1]


async def test_a_version_the_store_never_saw_opens_and_is_recorded(store_url: str) -> None:
    """A process given only another version than the store's data (all of it then opens as
    undecryptable, as before) is not refused: nothing says its key is wrong."""
    async with sealed_app(store_url, 1) as app:
        await app.append(unique("s"), [Secret(owner="ann", text="under 1")])
    async with sealed_app(store_url, 7):
        pass
    assert checks(store_url) == [1, 7]
