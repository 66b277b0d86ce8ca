"""Sealing: how event data, snapshots and timer payloads are encrypted, and what binds them.

A sealed blob is AES-256-GCM ciphertext behind a clear header::

    magic "tds1" | kind u8 | key version u32 | stream version u64 | scope | stream | content type
    | nonce (12 random bytes) | ciphertext and 16-byte tag

(strings are a u16 length and UTF-8). The header is authenticated with the data: together with
the event's id, type and schema version it is the AES-GCM associated data. So a blob decrypts only
as the event it was sealed for, in the stream and at the version it was sealed for: a flipped bit
anywhere, a blob moved to another row, or a header edited to name another version all fail the
tag. The header is clear because a reader needs it to find the key (scope and key version) and
because it says where the blob belongs, which a reader compares with where it found it.

Nothing here does I/O: keys are handed in, already unwrapped.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.errors import Undecryptable

#: The ``datacontenttype`` of a sealed envelope; the original content type is in the header.
SEALED: Final = "application/vnd.tidings.sealed"
MAGIC: Final = b"tds1"
NONCE_SIZE: Final = 12
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
_FIXED = struct.Struct(">4sBIQ")  # magic, kind, key version, stream version
_LENGTH = struct.Struct(">H")


class Kind(enum.IntEnum):
    EVENT = 0  # event data, bound to its stream version
    SNAPSHOT = 1  # an aggregate's snapshot state, bound to the snapshot's version
    PENDING = 2  # a timer's event data, whose stream version is not known until it fires


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    key_version: int
    version: int
    scope: str
    stream: str
    content_type: str
    raw: bytes  # the header as stored: authenticated as it is

    def describe(self) -> str:
        return f"stream {self.stream!r} version {self.version}"


def seal(
    key: AESGCM,
    plaintext: bytes,
    *,
    kind: Kind,
    key_version: int,
    version: int,
    scope: str,
    stream: str,
    content_type: str,
    context: bytes,
) -> bytes:
    """Encrypt ``plaintext``; ``context`` (the event's id, type, schema) is authenticated too."""
    header = _FIXED.pack(MAGIC, kind, key_version, version) + b"".join(
        _LENGTH.pack(len(encoded)) + encoded
        for encoded in (scope.encode(), stream.encode(), content_type.encode())
    )
    nonce = os.urandom(NONCE_SIZE)
    return header + nonce + key.encrypt(nonce, plaintext, header + context)


def sealed_size(size: int, *, scope: str, stream: str, content_type: str) -> int:
    """How long ``seal`` makes ``size`` bytes: the header, the nonce and the tag come on top."""
    strings = (scope, stream, content_type)
    # Measured, not encoded: a name that cannot be encoded fails where it is sealed, not here.
    named = sum(_LENGTH.size + len(s.encode("utf-8", "surrogatepass")) for s in strings)
    return _FIXED.size + named + NONCE_SIZE + size + TAG_SIZE


def read_header(blob: bytes, what: str) -> Header:
    """The clear header of a sealed blob; ``Undecryptable`` if it is not one."""
    try:
        magic, kind, key_version, version = _FIXED.unpack_from(blob)
        offset = _FIXED.size
        strings: list[str] = []
        for _ in range(3):
            (length,) = _LENGTH.unpack_from(blob, offset)
            offset += _LENGTH.size
            if offset + length > len(blob):
                raise ValueError("cut short")
            strings.append(blob[offset : offset + length].decode())
            offset += length
        if magic != MAGIC or offset + NONCE_SIZE + TAG_SIZE > len(blob):
            raise ValueError("not a sealed blob")
        scope, stream, content_type = strings
        return Header(Kind(kind), key_version, version, scope, stream, content_type, blob[:offset])
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise Undecryptable(f"{what}: the sealed data's header is damaged ({exc})") from None


def open_sealed(key: AESGCM, blob: bytes, header: Header, context: bytes, what: str) -> bytes:
    start = len(header.raw)
    nonce = blob[start : start + NONCE_SIZE]
    try:
        return key.decrypt(nonce, blob[start + NONCE_SIZE :], header.raw + context)
    except InvalidTag:
        raise Undecryptable(
            f"{what}: integrity check failed (the ciphertext, its nonce or tag, or its header was "
            f"altered, or it was moved from another event; it was sealed for {header.describe()})"
        ) from None


def event_context(event_id: str, event_type: str, schema_version: int) -> bytes:
    return b"\0".join((b"event", event_id.encode(), event_type.encode(), str(schema_version).encode()))


def snapshot_context(schema: str) -> bytes:
    return b"snapshot\0" + schema.encode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
