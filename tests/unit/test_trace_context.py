"""W3C trace context as tidings reads it from envelopes: well formed or dropped."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace

from tidings.cli.logs import JsonFormatter
from tidings.domain.trace_context import checked, valid_traceparent, valid_tracestate
from tidings.testing.telemetry import recording

GOOD = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "value",
    [
        GOOD,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later-fields",  # a later version
    ],
)
def test_well_formed_traceparents_are_read(value: str) -> None:
    assert valid_traceparent(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # trace id all zeros
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # parent id all zeros
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # parent id short
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more",  # version 00 has no more
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
        "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n",
        "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",  # later version: "-" first
    ],
)
def test_malformed_traceparents_are_dropped(value: str) -> None:
    assert not valid_traceparent(value)


@pytest.mark.parametrize(
    "value",
    ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "a@b=1,,c*/_-=x y", ",", "", "a=1 "],
)
def test_well_formed_tracestates_are_read(value: str) -> None:
    assert valid_tracestate(value)


@pytest.mark.parametrize(
    "value",
    [
        "Upper=1",  # keys are lower case
        "a=1,a=2",  # a key twice
        "a=",  # a value has at least one character
        "a=x,b",  # no "="
        "a=b=c",
        "a=\u00e9",
        "1abc=x",  # a simple key starts with a letter
        "t@" + "s" * 15 + "=x",  # a system id of 15 characters
        ",".join(f"k{n}=v" for n in range(33)),  # 33 members
        "k=" + "v" * 600,  # over 512 characters
    ],
)
def test_malformed_tracestates_are_dropped(value: str) -> None:
    assert not valid_tracestate(value)


def test_a_tracestate_goes_with_a_dropped_traceparent() -> None:
    assert checked("junk", "a=1") == (None, None, True)
    assert checked(None, "a=1") == (None, None, True)
    assert checked(GOOD, "A=1") == (GOOD, None, True)
    assert checked(GOOD, "a=1") == (GOOD, "a=1", False)
    assert checked(None, None) == (None, None, False)


@given(st.text(max_size=80))
def test_any_text_is_read_or_dropped_never_an_error(value: str) -> None:
    valid_traceparent(value)
    valid_tracestate(value)
    traceparent, tracestate, dropped = checked(value, value)
    assert dropped or (traceparent == value and tracestate == value)


@given(
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{2}", fullmatch=True),
)
def test_every_version_00_with_nonzero_ids_is_read(trace_id: str, parent_id: str, flags: str) -> None:
    value = f"00-{trace_id}-{parent_id}-{flags}"
    assert valid_traceparent(value) == (set(trace_id) != {"0"} and set(parent_id) != {"0"})


def test_json_logs_carry_the_recorded_span_ids() -> None:
    recording()
    formatter = JsonFormatter()
    record = logging.LogRecord("tidings.test", logging.INFO, __file__, 1, "hello", None, None)
    assert "trace_id" not in json.loads(formatter.format(record))  # no span: none
    with trace.get_tracer("test").start_as_current_span("work") as span:
        line = json.loads(formatter.format(record))
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_tidings_never_imports_the_sdk(tmp_path: Path) -> None:
    """A base install has the API only: publishing and handling import nothing of the SDK."""
    script = f"""
import asyncio, sys
from tidings.app import App
from tidings.testing.conformance.events import Ping

async def main() -> None:
    app = App("no-sdk", store="sqlite:///{tmp_path / "store.db"}")
    async with app:
        await app.publish(Ping(key="k", n=1))
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry.sdk")))

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_providers_set_before_tidings_is_imported_are_used(tmp_path: Path) -> None:
    """A program that sets up its OpenTelemetry SDK first and imports its App after (the usual
    order in a service's main) gets tidings' spans and metrics as one that imports first."""
    script = f"""
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)

from tidings.app import App
from tidings.testing.conformance.events import Ping

async def main() -> None:
    async with App("sdk-first", store="sqlite:///{tmp_path / "store.db"}") as app:
        await app.publish(Ping(key="k", n=1))
    data = reader.get_metrics_data()  # None when nothing was measured
    scopes = [sm for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics]
    names = {{m.name for sm in scopes for m in sm.metrics}}
    print(sorted(s.name for s in spans.get_finished_spans()), "messaging.client.sent.messages" in names)

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    spans, metered = done.stdout.rsplit(" ", 1)
    assert "send" in spans and metered.strip() == "True", done.stdout


def test_without_an_sdk_telemetry_is_off() -> None:
    """No provider set: each step skips its telemetry (the zero-cost path), metrics included."""
    script = "from tidings.runtime import telemetry as t; print(t.tracing(), t.metering(), t.enabled())"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]
