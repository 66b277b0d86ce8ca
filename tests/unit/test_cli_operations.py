"""``tidings dlq``, ``tidings trace`` and ``tidings run`` against real SQLite files."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
from typer.testing import CliRunner

from tidings.app import App
from tidings.cli import app as cli
from tidings.domain.saga import SagaInstance
from tidings.errors import AggregateNotFound
from tidings.runtime.context import Context
from tidings.runtime.retries import Retry
from tidings.testing.conformance.events import Ping, Pong
from tidings.testing.conformance.sagas import OrderPlaced, Shop, fulfilment
from tidings.testing.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]


def tidings(*args: str, stored_traceback: bool = False) -> tuple[int, str]:
    """Run the CLI; it never crashes with a traceback (``dlq show`` prints a stored one)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if not stored_traceback:
        assert "Traceback" not in result.output
    return result.exit_code, result.output


async def _busy_store(url: str) -> str:
    """A store where group "picky" handled some pings (replying with pongs) and dead-lettered one."""
    app = App("ops", store=url)

    @app.subscribe("conformance.bus.ping", group="picky", retry=Retry(attempts=2, backoff=0.01))
    async def picky(event: Ping, ctx: Context) -> None:
        if event.n == 3:
            raise LookupError("no such thing as three")
        async with ctx.unit_of_work() as uow:
            uow.publish(Pong(key=event.key, n=event.n), key=event.key)

    async with app, app.running(lease_ttl=2.0, poll=0.02):
        first = await app.publish(Ping(key="k", n=1), key="k", correlation_id="journey-1")
        await app.publish(Ping(key="k", n=3), key="k")

        async def settled() -> bool:
            return len(await app.dead_letters("picky")) == 1

        await eventually(settled)
    return first.envelope.id


def test_dead_letters_listed_shown_redriven_and_purged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    asyncio.run(_busy_store(url))
    code, out = tidings("dlq", "list", "--store", url)
    assert code == 0 and "picky" in out and "failed" in out and "no such thing" in out
    code, out = tidings("dlq", "show", "1", "--store", url, stored_traceback=True)
    assert code == 0 and "LookupError: no such thing as three" in out
    assert "in picky" in out  # the handler's frame in the stored traceback
    assert '"n":3' in out  # the original envelope
    code, out = tidings("dlq", "redrive", "1", "--store", url)
    assert code == 0 and "1 dead letter(s) queued for redrive" in out
    code, out = tidings("dlq", "list", "--store", url, "--state", "redrive")
    assert "picky" in out
    code, out = tidings("dlq", "purge", "--group", "picky", "--all", "--store", url)
    assert code == 2 and "nothing to purge: no dead letters of group 'picky' in state 'dead'" in out
    code, out = tidings("dlq", "purge", "1", "--store", url)
    assert code == 0 and "1 dead letter(s) purged" in out
    code, out = tidings("dlq", "show", "99", "--store", url)
    assert code == 2 and "no dead letter 99" in out
    code, out = tidings("dlq", "redrive", "--store", url)
    assert code == 2 and "--group GROUP --all" in out


def one_error_line(*args: str) -> str:
    """The one red line a refused command prints on stderr (exit code 2), nothing on stdout."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_dead_letter_commands_with_nothing_to_act_on_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    asyncio.run(_busy_store(url))
    for command in ("redrive", "purge"):
        line = one_error_line("dlq", command, "99999", "--store", url)
        assert "no dead letter 99999; nothing changed" in line
    # One unknown id among known ones changes nothing at all.
    assert "no dead letter 7" in one_error_line("dlq", "redrive", "1", "7", "--store", url)
    assert "no dead letter 1 of group 'other'" in one_error_line(
        "dlq", "redrive", "1", "--group", "other", "--store", url
    )
    code, out = tidings("dlq", "list", "--store", url)
    assert code == 0 and "dead letter(s)" in out and "redrive" not in out
    code, out = tidings("dlq", "redrive", "1", "--store", url)
    assert code == 0 and "1 dead letter(s) queued for redrive" in out
    assert "already queued for redrive" in one_error_line("dlq", "redrive", "1", "--store", url)
    for group in ("picky", "nobody"):
        line = one_error_line("dlq", "redrive", "--group", group, "--all", "--store", url)
        assert f"nothing to redrive: no dead letters of group {group!r} in state 'dead'" in line


def test_an_unknown_state_or_saga_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    asyncio.run(_busy_store(url))
    line = one_error_line("dlq", "list", "--state", "bogus", "--store", url)
    assert "--state 'bogus' is not one of dead, redrive, redriven, purged, all" in line
    line = one_error_line("sagas", "list", "--state", "bogus", "--store", url)
    states = "running, compensating, completed, compensated, stuck, sealed"
    assert f"--state 'bogus' is not one of {states}" in line
    line = one_error_line("sagas", "list", "--saga", "nosuch", "--store", url)
    assert "no saga 'nosuch' in this store" in line
    # A known state that nothing is in is an answer, not an error.
    result = CliRunner().invoke(cli, ["dlq", "list", "--state", "purged", "--store", url])
    assert result.exit_code == 0 and result.stdout == ""
    assert "no dead letters in state 'purged'" in result.stderr


def test_trace_draws_the_causation_tree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'trace.db'}"
    asyncio.run(_busy_store(url))
    code, out = tidings("trace", "journey-1", "--store", url)
    assert code == 0, out
    assert "correlation journey-1" in out
    assert "conformance.Ping" in out and "conformance.Pong" in out
    assert "picky: handled after 1 attempt(s)" in out
    code, out = tidings("trace", "nobody-knows", "--store", url)
    assert code == 2 and "no events with correlation id" in out


def test_run_works_until_sigterm_and_shares_work_between_workers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    (tmp_path / "runapp.py").write_text(
        textwrap.dedent(
            f"""
            from tidings.app import App
            from tidings.testing.conformance.events import Ping

            app = App("runner", store={url!r})

            @app.subscribe("conformance.bus.ping", group="runners")
            async def count(event: Ping, ctx) -> None:
                async with ctx.unit_of_work() as uow:
                    seen = await uow.get("seen", event.key, list) or []
                    uow.put("seen", event.key, [*seen, event.n])
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "tidings", "run", "runapp:app", "--workers", "2", "--lease-ttl", "1"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def publish_and_wait() -> None:
        app = App("publisher", store=url)
        async with app:
            for n in range(20):
                for key in ("a", "b", "c"):
                    await app.publish(Ping(key=key, n=n), key=key)

            async def done() -> bool:
                for key in ("a", "b", "c"):
                    raw = await app.store.get_document("seen", key)
                    if raw is None or msgspec.json.decode(raw) != list(range(20)):
                        return False
                return True

            await eventually(done, within=30)

    try:
        asyncio.run(publish_and_wait())
    finally:
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert "Traceback" not in err


def test_run_names_a_wrong_target(tmp_path: Path) -> None:
    code, out = tidings("run", "no_such_module_here:app")
    assert code == 2 and "cannot import 'no_such_module_here'" in out


def test_dead_letter_commands_take_the_store_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    asyncio.run(_busy_store(url))
    result = CliRunner().invoke(cli, ["dlq", "list"], env={"TIDINGS_STORE": url})
    assert result.exit_code == 0 and "picky" in result.output
    result = CliRunner().invoke(cli, ["trace", "journey-1"], env={"TIDINGS_STORE": url})
    assert result.exit_code == 0 and "correlation journey-1" in result.output


async def _sagas(url: str) -> tuple[str, str]:
    """One completed and one compensated instance of a saga."""
    app = App("shop", store=url)
    Shop(app)
    app.add_saga(fulfilment("cli"))
    async with app, app.running(lease_ttl=2.0, poll=0.2):
        await app.publish(OrderPlaced(order_id="fine", amount=5), key="fine")
        await app.publish(OrderPlaced(order_id="broke", amount=5, trouble="decline"), key="broke")

        async def ended() -> bool:
            try:
                states = [(await app.load(SagaInstance, f"cli:{key}")).status for key in ("fine", "broke")]
            except AggregateNotFound:
                return False
            return states == ["completed", "compensated"]

        await eventually(ended, within=20)
    return "cli:fine", "cli:broke"


def test_sagas_are_listed_and_shown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    fine, broke = asyncio.run(_sagas(url))
    code, listing = tidings("sagas", "list", "--store", url)
    assert code == 0 and fine in listing and broke in listing and "compensated" in listing
    code, only = tidings("sagas", "list", "--store", url, "--state", "compensated")
    assert code == 0 and broke in only and fine not in only
    code, shown = tidings("sagas", "show", broke, "--store", url)
    assert code == 0
    expected = ("started by conformance.OrderPlaced", "step 1: failed", "step 0 (reserve): compensation")
    for line in expected:
        assert line in shown, shown
    assert "ended: compensated" in shown
    code, missing = tidings("sagas", "show", "cli:nobody", "--store", url)
    assert code == 2 and "no saga instance" in missing
