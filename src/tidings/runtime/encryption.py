"""How an App is told to encrypt: where its master key comes from and how streams map to scopes."""

from __future__ import annotations

from dataclasses import dataclass

from tidings.errors import ConfigurationError
from tidings.ports import EventStore
from tidings.runtime.keyring import CACHED_SCOPES, REFRESH_SECONDS, ROTATE_AFTER, KeyRing, ScopeOf
from tidings.runtime.master_key import ENV_KEY, ENV_KEY_FILE, LocalMasterKey, MasterKey


@dataclass(frozen=True, slots=True)
class Encryption:
    """``master_key``: a ``MasterKey`` (a KMS adapter, say); None reads ``TIDINGS_MASTER_KEY`` or
    the file ``TIDINGS_MASTER_KEY_FILE`` names. ``scope``: the data key scope of a stream (by
    default the stream itself); ``rotate_after``: encryptions per data key version (at most
    2**30, far below AES-GCM's 2**32 with random nonces)."""

    master_key: MasterKey | None = None
    scope: ScopeOf | None = None
    rotate_after: int = ROTATE_AFTER
    #: Read events stored in the clear (written before encryption was switched on); off, such an
    #: event is ``Undecryptable``, so that no one who can write a row can slip a forged one in.
    accept_plaintext: bool = False
    #: Seconds a process trusts a loaded key or a reservation before it asks the store again: how
    #: soon a shred or a rotation elsewhere reaches it.
    refresh: float = REFRESH_SECONDS
    #: Scopes whose keys a process keeps in memory (the oldest half goes past it).
    cached_scopes: int = CACHED_SCOPES

    @classmethod
    def configured(cls, setting: Encryption | bool | None) -> Encryption | None:
        """The App's setting: an ``Encryption``; True (a master key from the environment, which
        must hold one); False (off); None (on when the environment holds a master key)."""
        if isinstance(setting, Encryption):
            return setting
        if setting is False:
            return None
        master = LocalMasterKey.from_environment()
        if master is None:
            if setting:
                raise ConfigurationError(f"encryption is on but neither {ENV_KEY} nor {ENV_KEY_FILE} is set")
            return None
        return cls(master_key=master)

    def keyring(self, store: EventStore) -> KeyRing:
        master = self.master_key or LocalMasterKey.from_environment()
        if master is None:
            raise ConfigurationError(f"encryption is on but neither {ENV_KEY} nor {ENV_KEY_FILE} is set")
        if not 1 <= self.rotate_after <= ROTATE_AFTER:
            raise ConfigurationError(f"rotate_after must be 1 to {ROTATE_AFTER}, got {self.rotate_after}")
        return KeyRing(
            store,
            master,
            scope=self.scope,
            rotate_after=self.rotate_after,
            refresh=self.refresh,
            cached_scopes=self.cached_scopes,
        )
