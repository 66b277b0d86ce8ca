"""How an App is told to encrypt: where its master key comes from and how streams map to scopes."""

from __future__ import annotations

from dataclasses import dataclass

from tidings.errors import ConfigurationError
from tidings.ports import EventStore
from tidings.runtime.keyring import ROTATE_AFTER, KeyRing, ScopeOf
from tidings.runtime.master_key import ENV_KEY, ENV_KEY_FILE, LocalMasterKey, MasterKey


@dataclass(frozen=True, slots=True)
class Encryption:
    """``master_key``: a ``MasterKey`` (a KMS adapter, say); None reads ``TIDINGS_MASTER_KEY`` or
    the file ``TIDINGS_MASTER_KEY_FILE`` names. ``scope``: the data key scope of a stream (by
    default the stream itself); ``rotate_after``: encryptions per data key version."""

    master_key: MasterKey | None = None
    scope: ScopeOf | None = None
    rotate_after: int = ROTATE_AFTER

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
        if self.rotate_after < 1:
            raise ConfigurationError(f"rotate_after must be at least 1, got {self.rotate_after}")
        return KeyRing(store, master, scope=self.scope, rotate_after=self.rotate_after)
