"""The tracing benchmark, ``python -m benchmarks.tracing``: what spans and metrics cost.

The embedded full runtime (the SQLite log; every handler commits a unit of work) measured
(a) without an OpenTelemetry SDK (the API's no-op providers: what a base install runs) and
(b) with the SDK: a ``BatchSpanProcessor`` to an exporter that drops what it gets, and a metric
reader that aggregates every measurement; (c) the same, sampling 10% of the traces (what a busy
service would run: an unsampled span is not recorded). OpenTelemetry's providers are global and set once per
process, so each measurement runs in a process of its own, off and on alternating, in one run;
the table shows the median of the rounds. Latency is publish -> handler at 1,000 events/s, the
producer another process (untraced: the cost measured is the consumer's).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.bus import end_to_end, latency
from benchmarks.store import run_benchmark

ROOT = Path(__file__).resolve().parents[1]


#: The rows: what each measurement installs.
MODES = {"off": "off (no SDK)", "on": "on (SDK, batch)", "sampled": "on, 10% sampled"}


def _install_sdk(ratio: float) -> None:
    """The SDK as an application would run it, its exporters replaced by sinks."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from tidings.runtime.telemetry import refresh

    class Sink(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
    provider.add_span_processor(BatchSpanProcessor(Sink()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    refresh()


async def _measure(mode: str, count: int, seconds: float) -> dict[str, float]:
    if mode != "off":
        _install_sdk(1.0 if mode == "on" else 0.1)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'bus.db'}"
        throughput = await end_to_end(url, count, with_unit=True)
        p50, p99 = await latency(f"sqlite:///{Path(directory) / 'latency.db'}", seconds, 1000)
    return {"throughput": throughput, "p50": p50, "p99": p99}


def _round(mode: str, count: int, seconds: float) -> dict[str, float]:
    """One measurement, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_STORE", "TIDINGS_BUS", "OTEL_"))}
    command = [sys.executable, "-m", "benchmarks.tracing", "--child", mode]
    command += [str(count), str(seconds)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=900)
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


async def main_async(quick: bool, postgres: str) -> None:
    del postgres  # the embedded runtime only: the cost is tidings', whatever the engine
    rounds, count, seconds = (1, 1000, 1.0) if quick else (5, 10000, 5.0)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:  # alternating, so that drift of the machine hits every row
            results[mode].append(await asyncio.to_thread(_round, mode, count, seconds))
    title = f"tidings tracing cost: SQLite full runtime, {count:,} events; median of {rounds} rounds"
    table = Table(title=title)
    for column in ("telemetry", "full runtime ev/s", "latency p50 ms", "latency p99 ms"):
        table.add_column(column, justify="right")
    medians = {m: {k: statistics.median(r[k] for r in results[m]) for k in results[m][0]} for m in results}
    off = medians["off"]
    for mode, label in MODES.items():
        row = medians[mode]
        table.add_row(label, f"{row['throughput']:,.0f}", f"{row['p50']:.2f}", f"{row['p99']:.2f}")
        if mode != "off":
            table.add_row(
                "  cost",
                f"{1 - row['throughput'] / off['throughput']:.1%}",
                f"{row['p50'] - off['p50']:+.2f}",
                f"{row['p99'] - off['p99']:+.2f}",
            )
    Console(width=130).print(table)
    each = {mode: [round(r["throughput"]) for r in results[mode]] for mode in results}
    Console(width=130).print(f"throughput of each round: {each}")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        measured = asyncio.run(_measure(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        print(json.dumps(measured))
        return
    run_benchmark("benchmarks.tracing", "The tracing benchmark.", main_async)


if __name__ == "__main__":
    main()
