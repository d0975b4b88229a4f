"""Span export in a child process: the OTLP encoding and the HTTP posts leave the GIL alone.

Why: measured on the one-process chain benchmark, exporting from a thread of the traced
process cost about 0.13 ms of CPU per execution on that thread, and more on the event loop,
which waits for the GIL the thread holds while it encodes (a tracing-on run with spans
dropped instead of exported was 0.84x of tracing off; exporting from the thread, 0.73x).
The process keeps recording spans as before; its export thread turns each batch into compact
msgpack records (~2 µs a span) and writes them to the child's stdin; the child encodes them
to OTLP protobuf (:mod:`._otlp`) and posts them with the SDK's OTLP/HTTP exporter, built from
the same ``OTEL_*`` settings.

The pipe format is private to a process and the child it starts (the same installed code on
both ends), so it carries no schema version of its own: the first frame names the format
(:data:`FORMAT`) and the child refuses another. Frames are a 4-byte big-endian length and a
msgpack body. The child exits when its stdin closes, after exporting what it was sent: the
traced process ending (even by SIGKILL) ends it.
"""

from __future__ import annotations

import gc
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec
import structlog

from triggerbus.observability._records import Record

if TYPE_CHECKING:
    from triggerbus.observability._spans import ExportersShutdown

log = structlog.get_logger()

FORMAT = "triggerbus-spans/2"
_LENGTH = struct.Struct(">I")


class Hello(msgspec.Struct, tag="hello"):
    format: str
    environ: dict[str, str]
    resource_attributes: dict[str, Any]
    resource_schema_url: str
    scope_name: str
    scope_version: str | None
    scope_schema_url: str


class Batch(msgspec.Struct, tag="batch"):
    spans: list[Record]


class Flush(msgspec.Struct, tag="flush"):
    id: int


class Flushed(msgspec.Struct, tag="flushed"):
    id: int


Frame = Hello | Batch | Flush


# --- the traced process's end -------------------------------------------------------------------


class ExportProcess:
    """The child process and the pipe to it. Used from one thread at a time (the recorder's
    export lock)."""

    def __init__(self, hello: Hello) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Flushed)
        self._flushes = 0
        self._process = subprocess.Popen(
            [sys.executable, "-m", "triggerbus.observability._span_export"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its own session: a Ctrl-C meant for the traced process must not end the child
            # before the spans it holds are posted; its stdin closing ends it instead.
            start_new_session=True,
        )
        self._send(hello)

    @property
    def pid(self) -> int:
        return self._process.pid

    def export(self, records: list[Record]) -> None:
        """Hand ``records`` over; raises ``OSError`` when the child is gone."""
        self._send(Batch(records))

    def flush(self, timeout: float) -> bool:
        """Wait until the child has posted everything sent so far."""
        self._flushes += 1
        wanted = self._flushes
        self._send(Flush(wanted))
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            body = _read_frame(stdout, deadline)
            if body is None:
                return False
            try:
                flushed = self._decoder.decode(body)
            except msgspec.DecodeError as exc:  # something else wrote to the child's stdout
                log.warning("span_export_process_reply_unreadable", pid=self.pid, error=str(exc))
                return False
            if flushed.id >= wanted:
                return True

    def close(self, timeout: float) -> None:
        """Close the child's stdin (it posts what it holds and exits) and wait for it."""
        try:
            if self._process.stdin is not None:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("span_export_process_killed", pid=self.pid, waited_seconds=timeout)
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def _send(self, frame: Any) -> None:
        body = self._encoder.encode(frame)
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(_LENGTH.pack(len(body)) + body)
        stdin.flush()


def _read_frame(stream: BinaryIO, deadline: float | None = None) -> bytes | None:
    """One frame from a pipe, or None at its end or the deadline (None: no deadline).

    Reads the pipe's descriptor directly: a buffered reader's ``read`` cannot be bounded.
    """
    head = _read_exactly(stream, _LENGTH.size, deadline)
    if head is None:
        return None
    return _read_exactly(stream, _LENGTH.unpack(head)[0], deadline)


def _read_exactly(stream: BinaryIO, size: int, deadline: float | None) -> bytes | None:
    chunks: list[bytes] = []
    fd = stream.fileno()
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# --- the child ------------------------------------------------------------------------------------


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    from triggerbus.observability._otlp import SpanEncoder
    from triggerbus.observability._spans import ExportersShutdown, _otlp_http_client
    from triggerbus.observability.tracing import _span_exporters, bsp_settings

    decoder = msgspec.msgpack.Decoder(Frame)
    body = _read_frame(stdin)
    try:
        hello = decoder.decode(body) if body is not None else None
    except msgspec.DecodeError:
        hello = None
    if not isinstance(hello, Hello) or hello.format != FORMAT:
        log.error("span_export_process_refused", reason="first frame is not a hello in "
                  f"format {FORMAT}")  # fmt: skip
        return 2
    settings = bsp_settings(hello.environ)
    exporters = _span_exporters(hello.environ)
    clients = [c for c in map(_otlp_http_client, exporters) if c is not None]
    encoder = SpanEncoder(
        hello.resource_attributes,
        hello.scope_name,
        hello.scope_version,
        resource_schema_url=hello.resource_schema_url,
        scope_schema_url=hello.scope_schema_url,
    )
    backlog = _Backlog(settings.max_queue, settings.export_timeout)
    stopper = ExportersShutdown(lambda: exporters)
    reader = threading.Thread(target=_read_into, args=(stdin, decoder, backlog, stopper),
                              name="TriggerbusSpanPipe", daemon=True)  # fmt: skip
    reader.start()
    try:
        _post_backlog(backlog, encoder, clients, stdout)
    finally:
        stopper.stop()
        if backlog.dropped:
            log.warning("span_export_dropped_total", dropped=backlog.dropped)
    return 3 if backlog.broken else 0


class _Backlog:
    """The frames read from the pipe and not yet handled, bounded in spans.

    Why a backlog between the pipe and the posts: while the collector is down, each post
    retries for up to the exporter's timeout. Read only between posts, the pipe would fill,
    and the traced process's writes to it would block: its export thread stuck, its exit held
    for as many timeouts as it had batches queued. Read at once into a bounded backlog, the
    pipe never fills; spans past the bound are dropped and counted, as the batch processor's
    own queue drops them (``OTEL_BSP_MAX_QUEUE_SIZE``).
    """

    def __init__(self, max_spans: int, shutdown_budget: float) -> None:
        self.dropped = 0
        self.broken = False
        self._frames: deque[Batch | Flush] = deque()
        self._spans = 0
        self._max_spans = max_spans
        self._budget = shutdown_budget
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._gave_up = False

    def put(self, frame: Batch | Flush) -> None:
        with self._changed:
            if isinstance(frame, Batch):
                if self._spans + len(frame.spans) > self._max_spans:
                    self._drop(len(frame.spans))
                    return
                self._spans += len(frame.spans)
            self._frames.append(frame)
            self._changed.notify()

    def close(self, *, broken: bool = False) -> float:
        """No more frames (the traced process closed the pipe): what is held is posted until
        the shutdown budget runs out. Returns the deadline."""
        with self._changed:
            self.broken = broken
            self._deadline = time.monotonic() + self._budget
            self._changed.notify()
            return self._deadline

    def take(self) -> Batch | Flush | None:
        """The next frame to handle; None once closed and empty. A batch is dropped instead
        when closed and past the deadline, or after a post failed while closing: the
        collector is down, and each further batch would only wait out its own timeout."""
        with self._changed:
            while True:
                while not self._frames and self._deadline is None:
                    self._changed.wait()
                if not self._frames:
                    return None
                frame = self._frames.popleft()
                if isinstance(frame, Flush):
                    return frame
                self._spans -= len(frame.spans)
                if self._deadline is not None and (
                    self._gave_up or time.monotonic() >= self._deadline
                ):
                    self._drop(len(frame.spans))
                    continue
                return frame

    def posted(self, ok: bool) -> None:
        with self._changed:
            if not ok and self._deadline is not None:
                self._gave_up = True

    def _drop(self, spans: int) -> None:
        if not self.dropped:
            log.warning("span_export_dropping", spans=spans,
                        hint="the collector is down or slow and the backlog is full (or the "
                        "shutdown budget, OTEL_BSP_EXPORT_TIMEOUT, ran out); the total is "
                        "logged at exit")  # fmt: skip
        self.dropped += spans


def _read_into(
    stdin: BinaryIO,
    decoder: msgspec.msgpack.Decoder[Any],
    backlog: _Backlog,
    stopper: ExportersShutdown,
) -> None:
    broken = False
    while (body := _read_frame(stdin)) is not None:
        try:
            frame = decoder.decode(body)
        except msgspec.DecodeError as exc:  # the stream is broken: nothing after it is sure
            log.error("span_export_process_frame_unreadable", error=str(exc))
            broken = True
            break
        if isinstance(frame, Batch | Flush):
            backlog.put(frame)
    deadline = backlog.close(broken=broken)
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), stopper.stop)
    timer.daemon = True
    timer.start()


def _post_backlog(
    backlog: _Backlog, encoder: Any, clients: list[Any], stdout: BinaryIO
) -> None:
    replies = msgspec.msgpack.Encoder()
    while (frame := backlog.take()) is not None:
        if isinstance(frame, Batch):
            backlog.posted(_post(encoder.encode(frame.spans), clients, len(frame.spans)))
        else:
            reply = replies.encode(Flushed(frame.id))
            stdout.write(_LENGTH.pack(len(reply)) + reply)
            stdout.flush()


def _post(payload: bytes, clients: list[Any], spans: int) -> bool:
    """Post to every client; False if any failed (each logs its own failures, as the SDK
    exporter does)."""
    ok = True
    for client in clients:
        try:
            result = client.export(payload)
        except Exception as exc:  # one lost batch is not worth the export process
            log.warning("span_export_failed", spans=spans, error=str(exc))
            ok = False
        else:
            ok = ok and bool(getattr(result, "success", True))
    return ok


def hello_for(
    environ: Mapping[str, str],
    resource_attributes: Mapping[str, Any],
    resource_schema_url: str,
    scope_name: str,
    scope_version: str | None,
    scope_schema_url: str,
) -> Hello:
    """The first frame: the ``OTEL_*`` settings the child builds its exporter from, and the
    resource and scope (the traced process's, not the child's: its pid names the instance)."""
    return Hello(
        FORMAT,
        {key: value for key, value in environ.items() if key.startswith("OTEL_")},
        dict(resource_attributes),
        resource_schema_url,
        scope_name,
        scope_version,
        scope_schema_url,
    )


def main() -> int:
    # stdout carries the replies: logs go to stderr, which the child shares with its parent.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    # A batch decodes to thousands of containers; collections triggered by each few hundred
    # of them made decoding 2.4x slower. Nothing here keeps cycles for long: collect rarely.
    gc.set_threshold(50_000, 20, 20)
    return _serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    # Run the module under its own name, not as __main__: its structs' annotations are
    # resolved in the module they were defined in.
    from triggerbus.observability import _span_export

    sys.exit(_span_export.main())
