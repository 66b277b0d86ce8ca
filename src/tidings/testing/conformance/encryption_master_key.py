"""The master key check, asserted on every backend: an App given a master key that does not
match the store's is refused at open, before it writes anything; rotation records the new
version; a store from before the check records opens with the right key and gets them."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from tidings.app import App
from tidings.errors import BackendUnavailable, ConfigurationError
from tidings.ports import DataKeyRecord, EventStore, KeyStore
from tidings.runtime.encryption import Encryption
from tidings.runtime.key_check import check_master_key
from tidings.runtime.keyring import CHECK_SCOPE, key_context
from tidings.runtime.master_key import LocalMasterKey
from tidings.testing.conformance.encryption import Secret, master, master_key_of, sealed_app
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


async def test_a_key_file_sharing_no_version_with_the_store_is_refused(store_url: str) -> None:
    """A key file that holds only versions the store never saw is another key file: it would
    start a second keyring beside the store's, its data closed to the other Apps and theirs to
    it. Refused at open, nothing written. A key file that adds a new version beside the store's
    opens, and its new version is recorded."""
    async with sealed_app(store_url, 1) as app:
        await app.append(unique("s"), [Secret(owner="ann", text="under 1")])
    with pytest.raises(ConfigurationError, match=r"holds version\(s\) 7 and this store .* version\(s\) 1;"):
        await sealed_app(store_url, 7).open()
    assert checks(store_url) == [1]
    async with sealed_app(store_url, 1, 7):
        pass
    assert checks(store_url) == [1, 7]


async def test_a_check_record_rewrapped_by_an_older_binary_still_checks(
    store_url: str, store: EventStore
) -> None:
    """A binary from before the check records rotated the master key from version 1 to 2 and
    rewrapped the check record of version 1 with version 2, as any data key. The right keys
    still open the store, and a wrong version 2 is still refused. (The check unwrapped the
    record with its own number, 1, instead of the version that wraps it now: the right key was
    refused.)"""
    stream = unique("s")
    async with sealed_app(store_url, 1) as app:
        await app.append(stream, [Secret(owner="ann", text="before")])
    keys = master(1, 2)
    (check,) = await store.key_store.data_keys([CHECK_SCOPE])
    assert check.wrapped is not None
    context = key_context(CHECK_SCOPE, check.version)
    version, wrapped = await keys.wrap(await keys.unwrap(1, check.wrapped, context), context)
    assert await store.key_store.rewrap_data_key(check, version, wrapped)  # as the older rotation did
    with pytest.raises(ConfigurationError, match=refused(2)):
        await app_with(store_url, {1: master_key_of(1), 2: os.urandom(32)}).open()
    async with sealed_app(store_url, 1, 2) as reader:
        assert [s.event.text for s in await reader.read_stream(stream)] == ["before"]  # type: ignore[attr-defined]


class _Provider:
    """A master key provider (a KMS, say) over local keys: ``decrypt_only`` as a principal
    that may only unwrap, ``down`` as a provider that does not answer."""

    def __init__(self, keys: LocalMasterKey, *, decrypt_only: bool = False, down: bool = False) -> None:
        self.keys, self.decrypt_only, self.down = keys, decrypt_only, down

    @property
    def current_version(self) -> int:
        return self.keys.current_version

    async def wrap(self, key: bytes, context: bytes) -> tuple[int, bytes]:
        if self.decrypt_only or self.down:
            raise PermissionError("this principal may not encrypt")
        return await self.keys.wrap(key, context)

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        if self.down:
            raise ConnectionError("the provider did not answer")
        return await self.keys.unwrap(version, wrapped, context)


async def test_a_decrypt_only_principal_opens_without_writing_the_check(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider moved on to version 2, and this App's principal may only decrypt: the
    check record of version 2 cannot be written. The App opens all the same, reads, writes
    nothing, and says so. (The open failed.)"""
    stream = unique("s")
    async with sealed_app(store_url, 1) as app:
        await app.append(stream, [Secret(owner="ann", text="readable")])
    before = store_contents(store_url)
    provider = _Provider(master(1, 2), decrypt_only=True)
    with caplog.at_level(logging.WARNING, logger="tidings.keys"):
        async with App("reader", store=store_url, encryption=Encryption(master_key=provider)) as reader:
            assert [s.event.text for s in await reader.read_stream(stream)] == ["readable"]  # type: ignore[attr-defined]
    assert store_contents(store_url) == before
    assert any("master key version 2" in record.getMessage() for record in caplog.records)


async def test_a_provider_that_does_not_answer_is_not_a_wrong_key(store_url: str) -> None:
    """A provider's own failure while the key is checked fails the open as a backend that may
    answer next time (``BackendUnavailable``), never as a key that does not match."""
    async with sealed_app(store_url, 1) as app:
        await app.append(unique("s"), [Secret(owner="ann", text="hidden")])
    provider = _Provider(master(1), down=True)
    with pytest.raises(BackendUnavailable) as raised:
        await App("keyed", store=store_url, encryption=Encryption(master_key=provider)).open()
    assert isinstance(raised.value.__cause__, ConnectionError)


class _CountingKeys:
    """A store's keyring that counts the rows read through ``data_key_page``."""

    def __init__(self, keys: KeyStore) -> None:
        self.inner, self.rows = keys, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def data_key_page(self, after: tuple[str, int], limit: int) -> list[DataKeyRecord]:
        page = await self.inner.data_key_page(after, limit)
        self.rows += len(page)
        return page


class _CountingStore:
    """A store whose keyring counts the rows read through ``data_key_page``."""

    def __init__(self, store: EventStore) -> None:
        self.store, self.key_store = store, _CountingKeys(store.key_store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @property
    def rows(self) -> int:
        return self.key_store.rows


async def test_an_old_version_never_recorded_costs_a_few_rows_per_open(
    store_url: str, store: EventStore
) -> None:
    """Version 2 is recorded; the key also holds version 1, which never was (it can never be:
    only the current version wraps). Each open looks at a few keyring rows for it, not at the
    whole first pages (up to 5,000 rows, on every open)."""
    async with sealed_app(store_url, 2):
        pass
    now = datetime.now(UTC)
    async with store.transaction() as tx:
        for n in range(200):  # data keys of version 2 only: no evidence for version 1
            key = DataKeyRecord(
                scope=f"{unique('scope')}-{n}",
                version=1,
                master_version=2,
                wrapped=os.urandom(60),
                uses=1,
                created=now,
            )
            await tx.key_store.add_data_key(key)
    counting = _CountingStore(store)
    for _ in range(2):
        await check_master_key(cast(EventStore, counting), master(1, 2))
    assert 0 < counting.rows <= 2 * 50, counting.rows
