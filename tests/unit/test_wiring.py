"""``wiring.connect`` opens an App's store, keys and bus in one place: what cannot be opened
raises and leaves nothing open (no store threads or connections), and the codec as it was."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tidings import App, Encryption
from tidings.errors import ConfigurationError
from tidings.testing.eventually import eventually


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def store_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tidings-sqlite")]


async def test_an_open_refused_after_the_store_opened_leaves_it_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``Encryption`` that reads its master key from the environment, which holds none: the
    keyring is refused once the store is open."""
    monkeypatch.delenv("TIDINGS_MASTER_KEY", raising=False)
    monkeypatch.delenv("TIDINGS_MASTER_KEY_FILE", raising=False)
    before = store_threads()
    app = App("wiring", store=f"sqlite:///{tmp_path / 'w.db'}", encryption=Encryption())
    with pytest.raises(ConfigurationError, match="neither TIDINGS_MASTER_KEY nor TIDINGS_MASTER_KEY_FILE"):
        await app.open()
    # Closed, not merely unreferenced (the raised error keeps the store alive): SQLite removed
    # the write-ahead log with the last connection, and the store's threads end.
    assert files_in(tmp_path) == ["w.db"]
    await eventually(lambda: store_threads() == before, within=5)
    assert app.codec.keys is None
