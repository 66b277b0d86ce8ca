"""Sealing and master keys: pure logic, no store."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import ConfigurationError, Undecryptable
from tidings.runtime import crypto
from tidings.runtime.crypto import Kind
from tidings.runtime.master_key import LocalMasterKey, new_master_key_entry, write_key_file

KEY = AESGCM(bytes(range(32)))
CONTEXT = crypto.event_context("id-1", "shop.OrderPlaced", 2)


def sealed(plaintext: bytes = b'{"card":"4111"}', **changes: object) -> bytes:
    options: dict[str, object] = {
        "kind": Kind.EVENT,
        "key_version": 3,
        "version": 7,
        "scope": "customer-42",
        "stream": "order-9",
        "content_type": "application/json",
        "context": CONTEXT,
    }
    options.update(changes)
    return crypto.seal(KEY, plaintext, **options)  # type: ignore[arg-type]


def opened(blob: bytes, context: bytes = CONTEXT) -> bytes:
    return crypto.open_sealed(KEY, blob, crypto.read_header(blob, "test"), context, "test")


def test_round_trip_keeps_the_header_readable() -> None:
    blob = sealed()
    header = crypto.read_header(blob, "test")
    assert (header.kind, header.key_version, header.version) == (Kind.EVENT, 3, 7)
    assert (header.scope, header.stream, header.content_type) == (
        "customer-42",
        "order-9",
        "application/json",
    )
    assert opened(blob) == b'{"card":"4111"}'
    assert b"4111" not in blob


def test_nonces_are_random() -> None:
    assert sealed() != sealed()


def test_every_flipped_bit_anywhere_is_caught() -> None:
    blob = sealed()
    for at in range(len(blob)):
        for bit in (0x01, 0x80):
            damaged = blob[:at] + bytes([blob[at] ^ bit]) + blob[at + 1 :]
            with pytest.raises(Undecryptable):
                opened(damaged)


def test_cut_short_or_not_sealed_at_all() -> None:
    blob = sealed()
    for length in (0, 3, 10, len(blob) - 1):
        with pytest.raises(Undecryptable):
            opened(blob[:length])
    with pytest.raises(Undecryptable, match="header is damaged"):
        crypto.read_header(b'{"plain":"json"}', "test")


def test_another_event_context_does_not_open() -> None:
    with pytest.raises(Undecryptable, match="integrity check failed"):
        opened(sealed(), crypto.event_context("id-2", "shop.OrderPlaced", 2))
    with pytest.raises(Undecryptable):
        opened(sealed(), crypto.event_context("id-1", "shop.OrderPlaced", 3))


# -- master keys ---------------------------------------------------------------------------------

SECRET = base64.b64encode(os.urandom(32)).decode()


@pytest.mark.parametrize(
    ("text", "versions"),
    [
        (SECRET, [1]),
        (f"1:{SECRET}", [1]),
        (f"2:{SECRET}, 1:{SECRET}", [1, 2]),
        (f"5:{SECRET}\n7:{SECRET}\n", [5, 7]),
    ],
)
def test_master_key_text_forms(text: str, versions: list[int]) -> None:
    master = LocalMasterKey.parse(text, "test")
    assert master.versions == versions and master.current_version == versions[-1]
    assert SECRET not in repr(master)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "entry 1"),
        ("1:not base64!", "not base64"),
        (f"1:{base64.b64encode(b'short').decode()}", "must be 32"),
        (f"1:{SECRET},1:{SECRET}", "given twice"),
    ],
)
def test_bad_master_keys_are_named_not_shown(text: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint) as caught:
        LocalMasterKey.parse(text, "TIDINGS_MASTER_KEY")
    assert SECRET not in str(caught.value) and "TIDINGS_MASTER_KEY" in str(caught.value)


def test_wrapped_keys_unwrap_only_with_their_version_and_context() -> None:
    master = LocalMasterKey.parse(new_master_key_entry(1), "test")
    other = LocalMasterKey.parse(new_master_key_entry(1), "other")
    version, wrapped = asyncio.run(master.wrap(b"k" * 32, b"scope\x001"))
    assert asyncio.run(master.unwrap(version, wrapped, b"scope\x001")) == b"k" * 32
    with pytest.raises(Undecryptable, match="does not unwrap"):
        asyncio.run(master.unwrap(version, wrapped, b"scope\x002"))
    with pytest.raises(Undecryptable, match="does not unwrap"):
        asyncio.run(other.unwrap(version, wrapped, b"scope\x001"))
    with pytest.raises(Undecryptable, match="version 4"):
        asyncio.run(master.unwrap(4, wrapped, b"scope\x001"))


def test_key_files_must_be_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    write_key_file(path, f"1:{SECRET}\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert LocalMasterKey.from_file(path).versions == [1]
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(ConfigurationError, match="chmod 600") as caught:
            LocalMasterKey.from_file(path)
        assert SECRET not in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"master key file .*missing\.key does not exist"):
        LocalMasterKey.from_file(tmp_path / "missing.key")


# -- parsers of untrusted input, by property --------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_read_as_a_header_or_undecryptable(blob: bytes) -> None:
    try:
        header = crypto.read_header(blob, "test")
    except Undecryptable:
        return
    assert blob.startswith(header.raw) and header.raw.startswith(crypto.MAGIC)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**63 - 1),
    st.text(min_size=1, max_size=40),
)
def test_what_is_sealed_opens_only_whole(
    plaintext: bytes, key_version: int, version: int, stream: str
) -> None:
    blob = sealed(plaintext, key_version=key_version, version=version, stream=stream)
    header = crypto.read_header(blob, "test")
    assert (header.key_version, header.version, header.stream) == (key_version, version, stream)
    assert opened(blob) == plaintext
    with pytest.raises(Undecryptable):
        opened(blob[:-1])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=60))
def test_the_sealed_size_is_known_before_sealing(plaintext: bytes, scope: str, stream: str) -> None:
    """What publishing checks against the limit is what sealing makes."""
    content = "application/json"
    size = crypto.sealed_size(len(plaintext), scope=scope, stream=stream, content_type=content)
    assert size == len(sealed(plaintext, scope=scope, stream=stream, content_type=content))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_any_master_key_text_parses_or_is_a_configuration_error(text: str) -> None:
    try:
        master = LocalMasterKey.parse(text, "test")
    except ConfigurationError:
        return  # never another exception (a non-ASCII character was a ValueError once)
    assert master.versions and all(v >= 0 for v in master.versions)
