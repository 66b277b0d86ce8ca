"""One trace across processes: A -> B -> C handled by two ``tidings run`` worker processes, each
writing its spans as JSON lines (``tidings.testing.telemetry.export_to_file``) for the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from opentelemetry import trace

from tidings.app import App
from tidings.testing.eventually import eventually
from tidings.testing.telemetry import TracedA, read_spans, recording

ROOT = Path(__file__).resolve().parents[2]

#: What both workers import first: their spans go to a file of their own.
PREAMBLE = """
import os
from pathlib import Path

from tidings.app import App
from tidings.testing.telemetry import TracedA, TracedB, TracedC, export_to_file

export_to_file(Path(os.environ["SPANS_DIR"]) / f"{os.getpid()}.jsonl")
app = App("worker")
"""

#: Handles A, publishing B through its unit of work.
FIRST = """
@app.subscribe("tracing.chain.a", group="on-a")
async def on_a(event: TracedA, ctx) -> None:
    async with ctx.unit_of_work() as uow:
        uow.publish(TracedB(n=event.n))
"""

#: Handles B, publishing C at once, and C.
SECOND = """
@app.subscribe("tracing.chain.b", group="on-b")
async def on_b(event: TracedB, ctx) -> None:
    await ctx.publish(TracedC(n=event.n))


@app.subscribe("tracing.chain.c", group="on-c")
async def on_c(event: TracedC, ctx) -> None:
    pass
"""


def _start(tmp_path: Path, module: str, source: str, store: str, spans: Path) -> subprocess.Popen[str]:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PREAMBLE + source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "OTEL_"))}
    env |= {"PYTHONPATH": str(ROOT / "src"), "SPANS_DIR": str(spans)}
    with (tmp_path / f"{module}.err").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings", "run", f"{module}:app", "--store", store, "--lease-ttl", "1"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )


def _stop(runner: subprocess.Popen[str]) -> None:
    runner.send_signal(signal.SIGTERM)
    try:
        runner.wait(timeout=30)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()


def _hex(value: object) -> int:
    assert isinstance(value, str)
    return int(value, 16)


async def test_a_chain_through_two_worker_processes_is_one_trace(tmp_path: Path) -> None:
    recorded = recording()
    spans_dir = tmp_path / "spans"
    spans_dir.mkdir()
    store = f"sqlite:///{tmp_path / 'store.db'}"
    workers: list[subprocess.Popen[str]] = []

    def finished() -> list[tuple[str, dict[str, object]]]:
        return [(f.stem, span) for f in spans_dir.glob("*.jsonl") for span in read_spans(f)]

    def handled_c() -> bool:
        return any(span["name"] == "process tracing.chain.c" for _, span in finished())

    recorded.on(True)
    try:
        async with App("caller", store=store) as caller:  # the schema, before the workers start
            workers.append(_start(tmp_path, "first", FIRST, store, spans_dir))
            workers.append(_start(tmp_path, "second", SECOND, store, spans_dir))
            with trace.get_tracer("test").start_as_current_span("caller") as root:
                await caller.publish(TracedA(n=1))
            await eventually(handled_c, within=30)
    finally:
        recorded.on(False)
        for worker in workers:
            _stop(worker)
    trace_id = root.get_span_context().trace_id
    (send_a,) = [s for s in recorded.spans.get_finished_spans() if s.name == "send tracing.chain.a"]
    recorded.spans.clear()
    assert send_a.context is not None
    by_name: dict[str, tuple[str, dict[str, object]]] = {}
    for pid, span in finished():
        context = span["context"]
        assert isinstance(context, dict)
        if _hex(context["trace_id"]) == trace_id:
            by_name[str(span["name"])] = (pid, span)
    chain = ["process tracing.chain.a", "send tracing.chain.b", "process tracing.chain.b"]
    chain += ["send tracing.chain.c", "process tracing.chain.c"]
    assert set(chain) <= set(by_name), sorted(by_name)
    parent_id = send_a.context.span_id
    for name in chain:
        _, span = by_name[name]
        assert _hex(span["parent_id"]) == parent_id, name
        context = span["context"]
        assert isinstance(context, dict)
        parent_id = _hex(context["span_id"])
    # A in the first worker, B and C in the second: the trace crossed processes twice.
    first, second = by_name["process tracing.chain.a"][0], by_name["process tracing.chain.b"][0]
    assert first != second and by_name["process tracing.chain.c"][0] == second
    assert by_name["send tracing.chain.b"][0] == first
