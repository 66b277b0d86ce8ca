"""What tests record of tidings' telemetry: the OpenTelemetry SDK with an in-memory span exporter
and metric reader, set up once for the test process (OpenTelemetry's global providers can be set
once only), and a span exporter that writes JSON lines, for worker processes of a test.

Needs the ``otel`` extra (the SDK); tidings itself imports only the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tidings.domain.events import Event
from tidings.runtime.telemetry import refresh


class TracedA(Event, topic="tracing.chain.a", type="tracing.A"):
    """The first event of the chain that tracing tests follow (A -> B -> C)."""

    n: int


class TracedB(Event, topic="tracing.chain.b", type="tracing.B"):
    n: int


class TracedC(Event, topic="tracing.chain.c", type="tracing.C"):
    n: int


class _Gate(SimpleSpanProcessor):
    """Exports spans only while a test records (``Recording.on``): the global provider stays
    set for the rest of the test process, whose other tests need not fill the exporter."""

    on = False

    def on_end(self, span: ReadableSpan) -> None:
        if _Gate.on:
            super().on_end(span)


@dataclass(frozen=True)
class Recording:
    """The spans and metrics the test process records."""

    @staticmethod
    def on(recording: bool) -> None:
        """Export finished spans from now on, or stop."""
        _Gate.on = recording

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def points(self, name: str) -> list[tuple[dict[str, object], float]]:
        """The data points of metric ``name``, as (attributes, value: a sum, or a histogram's count)."""
        found: list[tuple[dict[str, object], float]] = []
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = point.value if isinstance(point, NumberDataPoint) else point.count
                        found.append((dict(point.attributes or {}), value))
        return found


_lock = threading.Lock()
_recording: Recording | None = None


def recording() -> Recording:
    """The test process's recording, set up on first use as the global providers."""
    global _recording
    with _lock:
        if _recording is None:
            spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
            provider = TracerProvider()
            provider.add_span_processor(_Gate(spans))
            trace.set_tracer_provider(provider)
            metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
            _recording = Recording(spans, reader)
            refresh()
        return _recording


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line (the SDK's own JSON of
    a span, on one line): how a worker process of a test hands its spans to the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(span.to_json())) + "\n" for span in spans)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(lines)
        return SpanExportResult.SUCCESS


def export_to_file(path: Path) -> None:
    """Record this process's spans into ``path`` (JSON lines; a worker process of a test)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    trace.set_tracer_provider(provider)
    refresh()


def read_spans(path: Path) -> list[dict[str, object]]:
    """The spans that ``JsonLinesSpanExporter`` wrote into ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
