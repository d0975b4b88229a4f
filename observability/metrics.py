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

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)

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

    def __init__(self, provider: MeterProvider, *, version: str = "") -> None:
        self.provider = provider
        meter = provider.get_meter("triggerbus", version)
        self._duration = meter.create_histogram(
            "triggerbus.chunk.duration",
            unit="s",
            description="Duration of chunk attempts",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
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
        self._duration_attributes: dict[tuple[str, str, str], dict[str, str]] = {}
        self._backlog: dict[tuple[str, str, str], int] = {}
        meter.create_observable_gauge(
            "triggerbus.chunk.backlog",
            callbacks=[self._observe_backlog],
            description="Pending invocations of a chunk consumer (undelivered plus unacked)",
        )

    def on_event(self, event: events.Event) -> None:
        match event:
            case events.ChunkSucceeded() | events.ChunkFailed():
                outcome = "succeeded" if isinstance(event, events.ChunkSucceeded) else "failed"
                key = (event.flow, event.chunk, outcome)
                attributes = self._duration_attributes.get(key)
                if attributes is None:
                    attributes = self._duration_attributes[key] = {
                        "triggerbus.flow": event.flow, "triggerbus.chunk": event.chunk,
                        "triggerbus.outcome": outcome,
                    }  # fmt: skip
                self._duration.record(event.duration, attributes)
            case events.ChunkInvoked():
                _count(self._invocations, (event.flow, event.chunk))
            case events.ChunkRetried():
                _count(self._retries, (event.flow, event.chunk))
            case events.ChunkDeadLettered():
                _count(self._dead_letters, (event.flow, event.chunk))
            case events.ExecutionStarted():
                _count(self._executions, (event.flow, "started"))
            case events.ExecutionClosed():
                _count(self._executions, (event.flow, event.status))
            case _:
                pass

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
    readers = [
        PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        for exporter in exporters
    ]
    provider = MeterProvider(resource=resource_from(environ), metric_readers=readers)
    return Metrics(provider, version=version)
