"""Master keys: what wraps the data keys. Never logged, never printed, never in an error.

The local master key comes from ``TIDINGS_MASTER_KEY`` or from the file that
``TIDINGS_MASTER_KEY_FILE`` names (refused if group or others may read it). Either holds one or
more versions, ``<version>:<base64 of 32 bytes>``, separated by commas, spaces or new lines; a
bare base64 key is version 1. The highest version wraps new data keys; the others stay to unwrap
what they wrapped until ``tidings keys rotate`` has rewrapped everything.

Another source (a KMS) plugs in by implementing ``MasterKey``.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tidings.errors import ConfigurationError, Undecryptable
from tidings.runtime.crypto import KEY_SIZE, NONCE_SIZE

ENV_KEY: Final = "TIDINGS_MASTER_KEY"
ENV_KEY_FILE: Final = "TIDINGS_MASTER_KEY_FILE"
_ENTRY = re.compile(r"(?:(\d{1,9}):)?(\S+)")


class MasterKey(Protocol):
    """Wraps data keys for storage and unwraps them; ``context`` binds a wrapping to its key's
    scope and version, so a wrapped key copied to another row does not unwrap."""

    @property
    def current_version(self) -> int: ...

    async def wrap(self, key: bytes, context: bytes) -> tuple[int, bytes]:
        """Wrap with the current version; returns (version, wrapped)."""

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        """The key; ``Undecryptable`` only if ``version`` does not open ``wrapped`` (the key
        check reads that as a wrong master key). A provider that cannot answer raises anything
        else (``BackendUnavailable`` best): the open that checks the key fails, to be tried
        again."""


class LocalMasterKey:
    """Master key versions held in this process (from the environment or a key file)."""

    def __init__(self, versions: dict[int, bytes], origin: str) -> None:
        if not versions:
            raise ConfigurationError(f"{origin} holds no master key")
        for version, key in versions.items():
            if len(key) != KEY_SIZE:
                raise ConfigurationError(
                    f"{origin}: master key version {version} is {len(key)} bytes; it must be {KEY_SIZE}"
                )
        self.origin = origin
        self._ciphers = {version: AESGCM(key) for version, key in versions.items()}
        #: Read again when a version it does not hold is asked for: ``tidings keys rotate`` adds
        #: versions to the file while processes that read it run on.
        self.path: Path | None = None

    def __repr__(self) -> str:  # never the key material
        return f"LocalMasterKey(origin={self.origin!r}, versions={sorted(self._ciphers)})"

    @property
    def current_version(self) -> int:
        return max(self._ciphers)

    @property
    def versions(self) -> list[int]:
        return sorted(self._ciphers)

    async def wrap(self, key: bytes, context: bytes) -> tuple[int, bytes]:
        version = self.current_version
        nonce = os.urandom(NONCE_SIZE)
        return version, nonce + self._ciphers[version].encrypt(nonce, key, b"data-key\0" + context)

    async def unwrap(self, version: int, wrapped: bytes, context: bytes) -> bytes:
        cipher = self._ciphers.get(version)
        if cipher is None and self.path is not None:
            self._ciphers.update(LocalMasterKey.from_file(self.path)._ciphers)
            cipher = self._ciphers.get(version)
        if cipher is None:
            raise Undecryptable(
                f"a data key is wrapped by master key version {version}, which {self.origin} does "
                f"not hold (it holds {self.versions}); add that version back"
            )
        try:
            return cipher.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], b"data-key\0" + context)
        except (InvalidTag, ValueError):  # ValueError: too short to hold a nonce and a tag
            raise Undecryptable(
                f"a data key does not unwrap with master key version {version} of {self.origin}: "
                "the key there is not the one that wrapped it, or the wrapped key was altered"
            ) from None

    @classmethod
    def parse(cls, text: str, origin: str) -> LocalMasterKey:
        versions: dict[int, bytes] = {}
        for number, entry in enumerate(re.split(r"[\s,]+", text.strip()), start=1):
            match = _ENTRY.fullmatch(entry)
            if not entry or match is None:
                raise ConfigurationError(f"{origin}: entry {number} is not <version>:<base64 key>")
            version = int(match.group(1) or 1)
            try:
                key = base64.b64decode(match.group(2), validate=True)
            except ValueError:  # binascii.Error, or a character outside ASCII
                raise ConfigurationError(f"{origin}: master key version {version} is not base64") from None
            if version in versions:
                raise ConfigurationError(f"{origin}: master key version {version} is given twice")
            versions[version] = key
        return cls(versions, origin)

    @classmethod
    def from_file(cls, path: Path) -> LocalMasterKey:
        try:
            status = path.stat()
        except FileNotFoundError:
            raise ConfigurationError(f"master key file {path} does not exist") from None
        except OSError as exc:
            raise ConfigurationError(f"master key file {path} cannot be read: {exc.strerror}") from None
        if status.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"master key file {path} may be read by group or others "
                f"(mode {stat.S_IMODE(status.st_mode):o}); `chmod 600 {path}` first"
            )
        master = cls.parse(path.read_text(), f"master key file {path}")
        master.path = path
        return master

    @classmethod
    def from_environment(cls) -> LocalMasterKey | None:
        """The master key that the environment names, if any."""
        if os.environ.get(ENV_KEY):
            return cls.parse(os.environ[ENV_KEY], ENV_KEY)
        if os.environ.get(ENV_KEY_FILE):
            return cls.from_file(Path(os.environ[ENV_KEY_FILE]))
        return None


def new_master_key_entry(version: int) -> str:
    """A fresh master key version in the text form above (for key files; never printed)."""
    return f"{version}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def write_key_file(path: Path, text: str) -> None:
    """Write a key file readable by its owner only, from its creation on, and atomically: a crash
    midway leaves the old file whole (it may hold the only copy of the keys)."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(draft, path)
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


@contextmanager
def locked_key_file(path: Path) -> Iterator[None]:
    """Hold the key file's exclusive lock while reading, changing and writing it (and whatever
    must not interleave with that): two rotations at once would each add the same version, and
    one of the new keys would be lost. The lock is on a sibling file, ``.<name>.lock``: the key
    file itself is replaced whole on every write, so a lock on it would stay on the old one."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot lock master key file {path} ({lock}): {exc.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # waits for the holder; released with the descriptor
        yield
    finally:
        os.close(descriptor)


def add_master_key_version(path: Path) -> LocalMasterKey:
    """Add a new master key version (the highest plus one) to a key file, and return the keys it
    holds now. The caller holds ``locked_key_file(path)``."""
    existing = LocalMasterKey.from_file(path)
    text = path.read_text().rstrip("\n")
    write_key_file(path, f"{text}\n{new_master_key_entry(existing.current_version + 1)}\n")
    return LocalMasterKey.from_file(path)
