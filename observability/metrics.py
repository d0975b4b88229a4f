"""OpenTelemetry metrics, fed by the Event Center, exported as ``OTEL_*`` says.

| instrument | kind | attributes |
|---|---|---|
| ``triggerbus.chunk.duration`` (s) | histogram | flow, chunk, outcome |
| ``triggerbus.chunk.invocations`` | counter | flow, chunk |
| ``triggerbus.chunk.retries`` | counter | flow, chunk |
| ``triggerbus.chunk.dead_letters`` | counter | flow, chunk |
| ``triggerbus.executions`` | counter | flow, status (started, completed, failed, cancelled) |
| ``triggerbus.chunk.backlog`` | gauge | flow, chunk, consumer |

``triggerbus.chunk.backlog`` is the chunk consumer's pending count (not yet delivered plus
delivered but unacknowledged): the signal an autoscaler reads. Each chunk host samples it for the
chunks it hosts; replicas report the same consumer, so take the maximum, not the sum.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from triggerbus.observability import events
from triggerbus.observability.tracing import (
    enabled_by,
    exporters_from_env,
    resource_from,
)

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)  # fmt: skip


class Metrics:
    """The instruments, and the Event Center subscriber that feeds them."""

    def __init__(
        self, provider: MeterProvider, *, version: str = "", durations: Durations | None = None
    ) -> None:
        self.provider = provider
        meter = provider.get_meter("triggerbus", version)
        self.durations = durations or Durations()
        # Counters are counted here, a dict increment per event, and handed to the SDK as
        # observable counters when the reader collects: the same cumulative sums on the wire,
        # without an SDK measurement (attribute hashing, locks, a Measurement) per event.
        self._invocations: dict[tuple[str, str], int] = {}
        self._retries: dict[tuple[str, str], int] = {}
        self._dead_letters: dict[tuple[str, str], int] = {}
        self._executions: dict[tuple[str, str], int] = {}
        for name, counts, description, keys in (
            ("triggerbus.chunk.invocations", self._invocations, "Chunk invocations dispatched",
             _CHUNK_KEYS),
            ("triggerbus.chunk.retries", self._retries, "Chunk attempts after the first",
             _CHUNK_KEYS),
            ("triggerbus.chunk.dead_letters", self._dead_letters,
             "Chunk invocations dead-lettered", _CHUNK_KEYS),
            ("triggerbus.executions", self._executions,
             "Executions started, and closed by status", _EXECUTION_KEYS),
        ):  # fmt: skip
            meter.create_observable_counter(
                name, callbacks=[_observe_counts(counts, keys)], description=description
            )
        self._backlog: dict[tuple[str, str, str], int] = {}
        self._handlers = self._handlers_by_type()
        meter.create_observable_gauge(
            "triggerbus.chunk.backlog",
            callbacks=[self._observe_backlog],
            description="Pending invocations of a chunk consumer (undelivered plus unacked)",
        )

    def on_event(self, event: events.Event) -> None:
        # One dict lookup per event: most events (every transition's) count nothing, and a
        # chain of isinstance checks ran for each of them.
        handle = self._handlers.get(event.__class__)
        if handle is not None:
            handle(event)

    def _handlers_by_type(self) -> dict[type[events.Event], Callable[[Any], None]]:
        durations, counts = self.durations, _count
        return {
            events.ChunkSucceeded: lambda e: durations.record(
                (e.flow, e.chunk, "succeeded"), e.duration),
            events.ChunkFailed: lambda e: durations.record((e.flow, e.chunk, "failed"), e.duration),
            events.ChunkInvoked: lambda e: counts(self._invocations, (e.flow, e.chunk)),
            events.ChunkRetried: lambda e: counts(self._retries, (e.flow, e.chunk)),
            events.ChunkDeadLettered: lambda e: counts(self._dead_letters, (e.flow, e.chunk)),
            events.ExecutionStarted: lambda e: counts(self._executions, (e.flow, "started")),
            events.ExecutionClosed: lambda e: counts(self._executions, (e.flow, e.status)),
        }  # fmt: skip

    def record_backlog(self, flow: str, chunk: str, consumer: str, pending: int) -> None:
        self._backlog[(flow, chunk, consumer)] = pending

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        for (flow, chunk, consumer), pending in list(self._backlog.items()):
            yield Observation(
                pending,
                {"triggerbus.flow": flow, "triggerbus.chunk": chunk,
                 "messaging.consumer.group.name": consumer},
            )  # fmt: skip

    def force_flush(self, timeout_millis: int = 5_000) -> bool:
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()


class Durations:
    """``triggerbus.chunk.duration``, aggregated here: explicit buckets, sum, count, min, max.

    Why not an SDK histogram: its ``record`` costs 20-35 µs on the event loop per chunk
    attempt (attribute hashing, a ``Measurement``, locks, and, inside a sampled span, an
    exemplar), more than the rest of an attempt's telemetry. Here a record is a bisect and a
    few increments under a lock; the reader's thread turns the totals into the same OTLP
    histogram points when it exports (:class:`_WithDurations`). Exemplars are not attached,
    and with delta temporality min and max are those since the process started.
    """

    NAME = "triggerbus.chunk.duration"
    KEYS = ("triggerbus.flow", "triggerbus.chunk", "triggerbus.outcome")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.started_ns = time.time_ns()
        self._lock = threading.Lock()
        # key -> [bucket counts..., count, sum, min, max]
        self._series: dict[tuple[str, str, str], list[Any]] = {}

    def record(self, key: tuple[str, str, str], seconds: float) -> None:
        with self._lock:
            series = self._series.get(key)
            if series is None:
                buckets = [0] * (len(self.bounds) + 1)
                series = self._series[key] = [*buckets, 0, 0.0, seconds, seconds]
            series[bisect_left(self.bounds, seconds)] += 1  # bounds are inclusive upper edges
            tail = len(self.bounds) + 1
            series[tail] += 1
            series[tail + 1] += seconds
            if seconds < series[tail + 2]:
                series[tail + 2] = seconds
            if seconds > series[tail + 3]:
                series[tail + 3] = seconds

    def snapshot(self) -> dict[tuple[str, str, str], list[Any]]:
        """A consistent copy of every series (cumulative since start)."""
        with self._lock:
            return {key: list(series) for key, series in self._series.items()}


class _WithDurations(MetricExporter):
    """A metric exporter that adds the :class:`Durations` histogram to each export.

    It stands between the SDK's periodic reader and the configured exporter, so the
    histogram travels with the SDK's own metrics, in the temporality the exporter prefers
    (cumulative unless ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` says delta).
    """

    def __init__(
        self,
        inner: MetricExporter,
        durations: Durations,
        resource: Resource,
        scope: InstrumentationScope,
    ) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self._durations = durations
        self._resource = resource
        self._scope = scope
        temporality = (inner._preferred_temporality or {}).get(HistogramInstrument)
        self._delta = temporality == AggregationTemporality.DELTA
        self._previous: dict[tuple[str, str, str], list[Any]] = {}
        self._previous_ns = durations.started_ns

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        metric = self._metric()
        if metric is not None:
            metrics_data = _with_metric(metrics_data, metric, self._resource, self._scope)
        return self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def _metric(self) -> Metric | None:
        now = time.time_ns()
        current = self._durations.snapshot()
        if not current:
            return None
        bounds = self._durations.bounds
        tail = len(bounds) + 1
        points = []
        for key, series in current.items():
            values = series
            start = self._durations.started_ns
            if self._delta:
                before = self._previous.get(key)
                start = self._previous_ns
                if before is not None:
                    values = [a - b for a, b in zip(series[: tail + 2], before, strict=False)]
                    values += series[tail + 2 :]  # min and max stay the series' own
                if not values[tail]:
                    continue
            points.append(
                HistogramDataPoint(
                    attributes=dict(zip(Durations.KEYS, key, strict=True)),
                    start_time_unix_nano=start,
                    time_unix_nano=now,
                    count=values[tail],
                    sum=values[tail + 1],
                    bucket_counts=values[:tail],
                    explicit_bounds=bounds,
                    min=values[tail + 2],
                    max=values[tail + 3],
                )
            )
        if self._delta:
            self._previous, self._previous_ns = current, now
        if not points:
            return None
        temporality = (
            AggregationTemporality.DELTA if self._delta else AggregationTemporality.CUMULATIVE
        )
        return Metric(
            name=Durations.NAME,
            description="Duration of chunk attempts",
            unit="s",
            data=Histogram(data_points=points, aggregation_temporality=temporality),
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _with_metric(
    data: MetricsData, metric: Metric, resource: Resource, scope: InstrumentationScope
) -> MetricsData:
    """``data`` with ``metric`` added to triggerbus's scope (created when absent)."""
    resources = list(data.resource_metrics)
    for r_index, resource_metrics in enumerate(resources):
        scopes = list(resource_metrics.scope_metrics)
        for s_index, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == scope.name:
                scopes[s_index] = ScopeMetrics(
                    scope=scope_metrics.scope,
                    metrics=[*scope_metrics.metrics, metric],
                    schema_url=scope_metrics.schema_url,
                )
                break
        else:
            scopes.append(ScopeMetrics(scope=scope, metrics=[metric], schema_url=""))
        resources[r_index] = ResourceMetrics(
            resource=resource_metrics.resource,
            scope_metrics=scopes,
            schema_url=resource_metrics.schema_url,
        )
        return MetricsData(resource_metrics=resources)
    scope_metrics = ScopeMetrics(scope=scope, metrics=[metric], schema_url="")
    resource_metrics = ResourceMetrics(
        resource=resource, scope_metrics=[scope_metrics], schema_url=""
    )
    return MetricsData(resource_metrics=[resource_metrics])


_CHUNK_KEYS = ("triggerbus.flow", "triggerbus.chunk")
_EXECUTION_KEYS = ("triggerbus.flow", "status")


def _count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
    counts[key] = counts.get(key, 0) + 1


def _observe_counts(
    counts: dict[tuple[str, str], int], keys: tuple[str, str]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        # Runs on the reader's thread; a copy taken under the GIL is a consistent view.
        for values, count in list(counts.items()):
            yield Observation(count, dict(zip(keys, values, strict=True)))

    return observe


def _metric_exporters(environ: Mapping[str, str]) -> list[MetricExporter]:
    return exporters_from_env(
        environ,
        signal="metrics",
        variable="OTEL_METRICS_EXPORTER",
        console=ConsoleMetricExporter,
        otlp_module="metric_exporter",
        otlp_class="OTLPMetricExporter",
    )


def export_interval(environ: Mapping[str, str]) -> float:
    """Seconds between metric exports (``OTEL_METRIC_EXPORT_INTERVAL`` is milliseconds)."""
    try:
        return max(0.05, float(environ.get("OTEL_METRIC_EXPORT_INTERVAL", "60000")) / 1000)
    except ValueError:
        return 60.0


def metrics_from_env(environ: Mapping[str, str], *, version: str = "") -> Metrics | None:
    """A :class:`Metrics` exporting as ``OTEL_*`` says, or None when metrics are off."""
    if not enabled_by(environ, "metrics"):
        return None
    exporters = _metric_exporters(environ)
    if not exporters:
        return None
    interval_ms = export_interval(environ) * 1000
    resource = resource_from(environ)
    scope = InstrumentationScope("triggerbus", version or None)
    durations = Durations()
    readers = [
        PeriodicExportingMetricReader(
            _WithDurations(exporter, durations, resource, scope), export_interval_millis=interval_ms
        )
        for exporter in exporters
    ]
    provider = MeterProvider(resource=resource, metric_readers=readers)
    return Metrics(provider, version=version, durations=durations)
