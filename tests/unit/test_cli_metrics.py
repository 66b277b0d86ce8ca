"""``tidings run --metrics-port``: a real worker process scraped over HTTP, its Prometheus text
parsed with prometheus_client's parser; its probes; and the command without the extra."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tidings.app import App
from tidings.testing.conformance.events import Ping
from tidings.testing.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]

#: One group whose handler waits while the gate file is missing (so that lag builds up), and
#: dead-letters at once every ping of a negative ``n``.
GATED_APP = """
import asyncio
from pathlib import Path

from tidings.app import App
from tidings.runtime.retries import Retry
from tidings.testing.conformance.events import Ping

app = App("gated")
GATE = Path(__file__).parent / "gate"


@app.subscribe("conformance.bus.ping", group="gated", retry=Retry(attempts=1))
async def handle(event: Ping, ctx) -> None:
    if event.n < 0:
        raise RuntimeError("poison")
    while not GATE.exists():
        await asyncio.sleep(0.05)
"""


#: ``tidings run``, its metrics sampled often (a test waits for a few samples).
RUN = (sys.executable, "-m", "tidings", "run", "--metrics-interval", "0.2")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**env, "PYTHONPATH": str(ROOT / "src")}


def start(tmp_path: Path, url: str, port: int, *options: str) -> subprocess.Popen[str]:
    (tmp_path / "gated.py").write_text(textwrap.dedent(GATED_APP))
    with (tmp_path / "gated.err").open("w") as err:
        return subprocess.Popen(
            [*RUN, "gated:app", "--store", url, "--lease-ttl", "1", "--metrics-port", str(port), *options],
            cwd=tmp_path,
            env=environment(),
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )


def stop(runner: subprocess.Popen[str], tmp_path: Path) -> None:
    runner.send_signal(signal.SIGTERM)
    runner.wait(timeout=30)
    assert runner.returncode == 0, (tmp_path / "gated.err").read_text()


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - our own http URL
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of ``/metrics`` by name, then by its labels (OpenTelemetry's scope labels
    left out)."""
    status, text = get(port, "/metrics")
    assert status == 200
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_")))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


async def wait_until_serving(port: int, runner: subprocess.Popen[str]) -> None:
    def up() -> bool:
        assert runner.poll() is None, "the worker ended"
        try:
            return get(port, "/healthz")[0] == 200
        except OSError:
            return False

    await eventually(up, within=30)


def test_lag_rises_while_the_handler_is_held_and_falls_to_zero_after(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'gated.db'}", free_port()
    runner = start(tmp_path, url, port)

    def lag() -> dict[tuple[tuple[str, str], ...], float]:
        return scrape(port).get("tidings_consumer_lag", {})

    def lag_seconds() -> dict[tuple[tuple[str, str], ...], float]:
        return scrape(port).get("tidings_consumer_lag_seconds", {})

    async def scenario() -> None:
        await wait_until_serving(port, runner)
        await eventually(lambda: len(lag()) == 8, within=30)  # one series per partition
        assert set(lag().values()) == {0}
        async with App("publisher", store=url) as app:
            for n in range(12):
                await app.publish(Ping(key=f"k{n % 3}", n=n), key=f"k{n % 3}")
            partitions = {str(app.feed.partition_of(f"k{n}")) for n in range(3)}
        await eventually(lambda: {dict(k)["partition"] for k, v in lag().items() if v > 0} == partitions)
        (labels, _), *_ = lag().items()
        assert dict(labels)["group"] == "gated" and dict(labels)["pattern"] == "conformance.bus.ping"
        await asyncio.sleep(1.2)  # the oldest unhandled event ages
        assert max(lag_seconds().values()) >= 1.0
        (tmp_path / "gate").touch()
        await eventually(lambda: set(lag().values()) == {0} and set(lag_seconds().values()) == {0}, within=30)

    try:
        asyncio.run(scenario())
    finally:
        stop(runner, tmp_path)


def test_dead_letter_depth_matches_the_dlq_list(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'gated.db'}", free_port()
    (tmp_path / "gate").touch()
    runner = start(tmp_path, url, port)

    def depth() -> dict[tuple[tuple[str, str], ...], float]:
        return scrape(port).get("tidings_dead_letters", {})

    async def scenario() -> None:
        await wait_until_serving(port, runner)
        async with App("publisher", store=url) as app:
            for n in range(1, 5):
                await app.publish(Ping(key=f"poison-{n}", n=-n), key=f"poison-{n}")
        dead = (("group", "gated"), ("reason", "failed"), ("state", "dead"))
        await eventually(lambda: depth().get(dead) == 4, within=30)
        created = scrape(port)["tidings_dead_letters_created_total"]
        assert created == {(("group", "gated"), ("reason", "failed")): 4}

    try:
        asyncio.run(scenario())
        listed = subprocess.run(
            [sys.executable, "-m", "tidings", "dlq", "list", "--store", url, "--group", "gated"],
            cwd=tmp_path,
            env={**environment(), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (count,) = re.findall(r"(\d+) dead letter\(s\)", listed.stdout)
        assert sum(depth().values()) == int(count) == 4
    finally:
        stop(runner, tmp_path)


def test_probes_answer_and_unknown_paths_are_404(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'gated.db'}", free_port()
    runner = start(tmp_path, url, port)

    async def scenario() -> None:
        await wait_until_serving(port, runner)

    try:
        asyncio.run(scenario())
        assert get(port, "/healthz") == (200, "ok\n")
        assert get(port, "/readyz") == (200, "ready\n")
        assert get(port, "/nowhere")[0] == 404
        assert get(port, "/metrics", method="POST")[0] == 405
        held = scrape(port)["tidings_partitions_held"]
        assert held == {(("group", "gated"),): 8}
    finally:
        stop(runner, tmp_path)


def test_without_the_extra_the_command_names_it_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "gated.py").write_text(textwrap.dedent(GATED_APP))
    program = (
        "import sys; sys.modules['prometheus_client'] = None\n"  # as if not installed
        "from tidings.cli import main\n"
        f"sys.argv = ['tidings', 'run', 'gated:app', '--store', 'sqlite:///{tmp_path}/x.db']\n"
        "main()\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env={**environment(), "TIDINGS_METRICS_PORT": str(free_port()), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 2
    (line,) = ran.stderr.strip().splitlines()
    assert "tidings[metrics]" in line


def test_the_base_import_leaves_the_sdk_and_the_prometheus_client_alone() -> None:
    program = (
        "import sys\n"
        "import tidings, tidings.app, tidings.cli.main, tidings.endpoints\n"
        "loaded = [m for m in ('opentelemetry.sdk', 'prometheus_client') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program], env=environment(), capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr


def test_each_worker_of_several_serves_its_own_port(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'gated.db'}", free_port()
    runner = start(tmp_path, url, port, "--workers", "2")

    def held() -> list[float]:
        return [scrape(p)["tidings_partitions_held"][(("group", "gated"),)] for p in (port, port + 1)]

    async def scenario() -> None:
        await wait_until_serving(port, runner)
        await wait_until_serving(port + 1, runner)
        # Two members of one group share its 8 partitions: each process tells its own share.
        await eventually(lambda: held() == [4, 4], within=30)

    try:
        asyncio.run(scenario())
    finally:
        stop(runner, tmp_path)
