"""The Execution handle: start, emit into, stream from and close one execution.

The handle holds no execution state of its own beyond what it has been told: the execution
actor (wherever it runs) is the single writer, and the handle talks to it through the mailbox,
reply subjects, the runtime stream and the close notification.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import time
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec
import structlog

from triggerbus._deprecation import Renamed
from triggerbus._runtime import (
    LocalRuntime,
    forget_resources,
    get_runtime,
    register_resources,
)
from triggerbus._sendable import encode_sent
from triggerbus._sync import future_of, in_running_loop, iterate_sync, run_detached, run_sync
from triggerbus.actors.execution import interrupt_record
from triggerbus.actors.state_paths import FINAL_RESULT_KEY, close_snapshot, get_path
from triggerbus.bus.subjects import EXECUTION_ID
from triggerbus.contracts.codec import NotSerializable, decode, encode, encode_value
from triggerbus.contracts.messages import (
    CloseExecution,
    EmitEvent,
    ErrorInfo,
    ExecutionClosed,
    Reply,
    ResumeInterrupt,
    SealExecution,
    StartExecution,
    StateWritten,
    StreamEnded,
    StreamItem,
    closed_decoder,
    refuses_unknown_execution,
    reply_decoder,
    stream_decoder,
)
from triggerbus.contracts.snapshot import Snapshot, snapshot_decoder
from triggerbus.errors import (
    BusError,
    ChunkFailedError,
    ExecutionClosedError,
    ExecutionError,
    ExecutionNotFoundError,
    FingerprintMismatchError,
    InterruptError,
    InterruptNotFoundError,
    InterruptNotWaitingError,
    LifecycleError,
    PendingInterruptsError,
    ResumeLimitError,
    chunk_failed_class,
)
from triggerbus.observability.telemetry import PublishInput
from triggerbus.observability.telemetry import current as telemetry

if TYPE_CHECKING:
    from triggerbus.flow import TriggerFlow

log = structlog.get_logger()
T = TypeVar("T")


SAVED_KIND = "triggerbus.execution"
"""The ``kind`` of what ``save()`` returns."""

RECHECK_SECONDS = 5.0
"""How long a handle waits on a reply or close notification before consulting the stored
snapshot, in case the notification was lost during a disconnection. Also how long a handle
whose background status read failed (an error, a closed bus) waits before reading again."""
RECHECK_MAX_SECONDS = 60.0
"""The longest pause between those store reads: each pause doubles from ``RECHECK_SECONDS``.
A lost notification is rare and a long cascade (a model call, a person's answer) is not; a
thousand handles waiting on long work read the store about 17 times a second, not 200."""

RECHECK_SHARE_SECONDS = 1.0
"""How long one recheck's store read serves the other requests of the same handle."""

STATUS_REFRESH_SECONDS = 0.05
"""The least time between two background store reads of one polled handle's status: a loop
polling ``is_waiting()`` every millisecond costs twenty reads a second, not a thousand."""


class ExecutionResult:
    """``execution.result``: what is known about the outcome, as TriggerFlow exposes it."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    def get_meta(self) -> dict[str, Any]:
        """TriggerFlow's meta keys. ``state_version`` is the revision of the execution's stored
        snapshot as this handle last saw it (0 before start): it grows with every transition."""
        e = self._execution
        e._keep_fresh()
        return {
            "execution_id": e.id,
            "flow_name": e.flow_name,
            "status": e._status,
            "lifecycle_state": e._lifecycle,
            "created_at": e._created_at,
            "started_at": e._started_at,
            "closed_at": e._closed_at,
            "close_reason": e._close_reason,
            "state_version": e._state_version,
        }

    def get_state(self, key: str | None = None, default: Any = None) -> Any:
        snapshot = self._execution._close_snapshot or {}
        if key is None:
            return dict(snapshot)
        return snapshot.get(key, default)

    def get_result(self) -> Any:
        return (self._execution._close_snapshot or {}).get("$final_result")


class Execution:
    """One run of a flow. Created by ``flow.create_execution()``; nothing is sent until start."""

    def __init__(
        self,
        flow: TriggerFlow,
        *,
        execution_id: str | None = None,
        skip_exceptions: bool = False,
        concurrency: int | None = None,
        runtime_resources: dict[str, Any] | None = None,
        auto_close: bool = True,
        auto_close_timeout: float | None = 10.0,
        idempotency_key: str | None = None,
    ) -> None:
        self._flow = flow
        if execution_id is not None and not EXECUTION_ID.fullmatch(execution_id):
            raise ExecutionError(
                f"execution_id {execution_id!r} must be 1-200 letters, digits, '-' or '_' (it "
                "is a subject token); pass any string as idempotency_key= instead",
                flow=flow.name,
                execution_id=execution_id,
            )
        self.id = execution_id or execution_id_for(idempotency_key) or uuid.uuid4().hex
        self._skip_exceptions = skip_exceptions
        self._concurrency = concurrency
        self._resources = dict(runtime_resources or {})
        self._auto_close = auto_close
        self._auto_close_timeout = auto_close_timeout
        self._status = "created"
        self._lifecycle = "open"
        self._created_at = time.time()
        self._started_at: float | None = None
        self._closed_at: float | None = None
        self._close_reason: str | None = None
        self._close_snapshot: dict[str, Any] | None = None
        self._state_version = 0
        self._error: ErrorInfo | None = None
        self._start_claim: tuple[Any] | None = None
        self._start_request: asyncio.Future[Reply] | None = None
        self._start_answered = False
        self._started = False
        self._status_read: asyncio.Task[None] | None = None
        self._status_read_due = 0.0
        self._answers_seen = 0
        self._recheck_read: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], float] | None = (
            None
        )
        self._home: (
            tuple[weakref.ref[asyncio.AbstractEventLoop], weakref.ref[LocalRuntime]] | None
        ) = None

    @property
    def result(self) -> ExecutionResult:
        """``execution.result`` (made on each access: kept, it would refer back to this handle,
        a reference cycle per execution that only the garbage collector frees)."""
        return ExecutionResult(self)

    # --- identity and local view --------------------------------------------------------------

    @property
    def execution_id(self) -> str:
        return self.id

    @property
    def flow_name(self) -> str:
        return self._flow.name

    def get_status(self) -> str:
        """``created``, ``running``, ``waiting``, ``completed``, ``failed`` or ``cancelled``.

        Polled while the execution is open, this follows the stored snapshot (see
        ``_keep_fresh``): a flow that pauses again after a resume or an emit reads
        ``waiting`` here, as in TriggerFlow, wherever the execution is hosted. The first read
        inside a running loop may still be the handle's previous view; ``async_get_snapshot()``
        reads the stored truth at once."""
        self._keep_fresh()
        return self._status

    def is_waiting(self) -> bool:
        """Whether an interrupt waits for ``continue_with`` (kept fresh as ``get_status``)."""
        self._keep_fresh()
        return self._status == "waiting"

    def get_lifecycle_state(self) -> str:
        self._keep_fresh()
        return self._lifecycle

    def is_open(self) -> bool:
        return self.get_lifecycle_state() == "open"

    def is_sealed(self) -> bool:
        return self.get_lifecycle_state() == "sealed"

    def is_closed(self) -> bool:
        return self.get_lifecycle_state() == "closed"

    def _keep_fresh(self) -> None:
        """Bring the handle's view of an open execution up to the stored snapshot.

        The execution actor may run in another process, so only the store knows when a flow
        pauses again because of something this handle did not send (another process's
        resume, an emit_nowait's cascade, a timer). These reads are sync and are polled from
        inside the user's running loop, where a store read would block it: there a read
        asked for is one store read in the background (``_refresh_status``), at most one in
        flight and one per ``STATUS_REFRESH_SECONDS``, whose answer the next poll sees.
        Nothing outlives it: a watch per polled handle would hold a consumer of the
        executions' stream each, and polling a few thousand executions ran the stream out of
        consumers (measured: 2,000 polled, 1,000 refused), starving ``get_result``'s own.
        Outside a running loop (the sync API, whose runtime runs on a background thread)
        blocking is what the caller asked for: one store read answers there.
        """
        if not self._started or self._close_snapshot is not None:
            return  # not started by this handle: "created"; closed: the answer is in memory
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._read_view_sync()
            return
        if self._status_read is not None or time.monotonic() < self._status_read_due:
            return
        home = self._home_of(loop)
        if home is False:
            return  # this loop's runtime, the one the handle used, is closed: nothing to read
        read = loop.create_task(self._refresh_status(home), name=f"triggerbus-status-{self.id}")
        read.add_done_callback(self._status_read_ended)
        self._status_read = read

    def _read_view_sync(self) -> None:
        try:
            run_sync(self._read_view())
        except BusError as exc:  # a status read answers; the handle's last view will do
            log.warning("status_read_failed", execution_id=self.id, error=str(exc))

    async def _read_view(self, runtime: LocalRuntime | None = None) -> None:
        # The bare runtime, not ``_runtime()``: reading a status must not host the flow.
        stored = await self._load(runtime or await get_runtime())
        if stored is not None:
            self._take_view(*stored)

    def _home_of(self, loop: asyncio.AbstractEventLoop) -> LocalRuntime | bool | None:
        """The runtime this handle last used on ``loop``; ``False`` when that one is gone (it
        was closed); ``None`` when the handle has used none on this loop.

        The read task runs after the status read that asked for it: had it looked the
        runtime up then, a runtime closed in between (a shutdown right after a poll) would be
        replaced by a new one, opened only to be read and never closed."""
        if self._home is None or self._home[0]() is not loop:
            return None
        return self._home[1]() or False

    async def _refresh_status(self, runtime: LocalRuntime | None) -> None:
        """One store read into the handle's view, unless an answer that arrived meanwhile
        (an emit's, a resume's) is newer than what the read could have seen."""
        answers = self._answers_seen
        pause = STATUS_REFRESH_SECONDS
        try:
            stored = await self._load(runtime or await get_runtime())
            closed = stored is not None and stored[0].lifecycle == "closed"
            if stored is not None and (closed or answers == self._answers_seen):
                self._take_view(*stored)
        except Exception as exc:  # a status read must never take anything else down
            log.warning("status_read_failed", execution_id=self.id, error=repr(exc))
            pause = RECHECK_SECONDS  # a failing or closed bus is not read at the polling rate
        self._status_read_due = time.monotonic() + pause

    def _status_read_ended(self, read: asyncio.Task[None]) -> None:
        # Dropping the finished task breaks the handle -> task -> coroutine -> handle cycle.
        if self._status_read is read:
            self._status_read = None

    def _take_view(self, snapshot: Snapshot, revision: int) -> None:
        """Take a stored snapshot (from a watch or a read) as the handle's view: its status,
        its lifecycle, and, once closed, its close snapshot, so everything the handle answers
        from memory after a close agrees with what the status said."""
        if snapshot.lifecycle == "closed":
            if self._close_snapshot is None:
                self._mark_closed(close_snapshot(snapshot), status=snapshot.status, reason=None)
                if snapshot.status == "failed":
                    self._error = snapshot.error
        elif revision >= self._state_version and self._close_snapshot is None:
            self._lifecycle = snapshot.lifecycle
        self._refresh((snapshot, revision))

    @property
    def started(self) -> bool:
        """True once a start was sent (by ``async_start`` or a runtime stream)."""
        return self._started

    @property
    def auto_close(self) -> bool:
        return self._auto_close

    @property
    def auto_close_timeout(self) -> float | None:
        """Idle seconds before the execution closes itself; ``None``: never."""
        return self._auto_close_timeout

    def get_runtime_resources(self) -> dict[str, Any]:
        """This execution's resources over the flow's in this process (those stay here: each
        process's chunks see their own process's flow-level resources)."""
        return {**self._flow.runtime_resources, **self._resources}

    def get_runtime_resource(self, key: str, default: Any = None) -> Any:
        return self.get_runtime_resources().get(str(key), default)

    def require_runtime_resource(self, key: str) -> Any:
        resources = self.get_runtime_resources()
        if str(key) not in resources:
            raise KeyError(
                f"execution {self.id} has no runtime resource {str(key)!r}; available "
                f"resources: {sorted(resources)}"
            )
        return resources[str(key)]

    def set_runtime_resource(self, key: str, value: Any) -> Execution:
        """Give this execution's chunks a resource. Set before the start, a serialisable one
        also rides in the start message to chunks in other processes; set after it, it
        reaches only the chunks hosted in this process."""
        self._resources[str(key)] = value
        if self._started:
            register_resources(self.id, self._resources)
        return self

    def del_runtime_resource(self, key: str) -> Execution:
        self._resources.pop(str(key), None)
        return self

    def update_runtime_resources(
        self, mapping: Mapping[str, Any] | None = None, **resources: Any
    ) -> Execution:
        for key, value in {**(mapping or {}), **resources}.items():
            self.set_runtime_resource(key, value)
        return self

    def clear_runtime_resources(self) -> Execution:
        self._resources.clear()
        return self

    # --- start ----------------------------------------------------------------------------------

    async def async_start(
        self,
        initial_value: Any = None,
        *,
        wait_for_result: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Start the execution.

        With ``auto_close`` (the default) this waits until the execution closes and returns the
        close snapshot; otherwise it returns this handle once the start's cascade has run.
        Only one start ever runs: the first call (or runtime stream) to ask decides the value;
        a later call waits on that same start. On a closed execution it returns the close
        snapshot.

        Args:
            initial_value: The value of the ``START`` event.
            wait_for_result: With ``auto_close``, ``False`` returns ``None`` once the start's
                cascade has run instead of waiting for the close.
            timeout: Overrides ``auto_close_timeout`` for this execution (before it starts).

        Raises:
            ChunkFailedError: a chunk raised and exceptions are not skipped.
            ValueNotSerializableError: the start value cannot be sent over the bus.
        """
        if self._close_snapshot is not None:
            return dict(self._close_snapshot)
        if self._start_claim is None:
            self._start_claim = (initial_value,)
            if timeout is not None:
                self._auto_close_timeout = timeout
        runtime = await self._runtime()
        async with self._closed_notices(runtime) as closed_sub:
            listening_before_start = self._start_request is None
            reply = await self._ensure_started(runtime)
            if not reply.ok:
                self._raise(reply.error)
            if not self._auto_close:
                self._refresh(await self._load(runtime))  # running, or waiting on an interrupt
                return self
            if not wait_for_result:
                return None
            missed_possible = not (listening_before_start and self._start_answered)
            closed = await self._wait_closed(runtime, closed_sub, look_first=missed_possible)
        return self._on_closed(closed)

    def start(self, initial_value: Any = None, **options: Any) -> Any:
        """Sync twin of ``async_start``."""
        if self._close_snapshot is not None:  # answered from memory: no loop to block
            return dict(self._close_snapshot)
        return run_sync(self.async_start(initial_value, **options))

    async def _ensure_started(self, runtime: LocalRuntime) -> Reply:
        """Send the start once; every caller waits on the same reply.

        The request is owned by this handle, not by its first caller: a caller that is
        cancelled (a runtime stream that ends) must not take the start down with it, or a
        later caller would resend an id the bus de-duplicates and never hear back.
        """
        if self._start_request is None:
            assert self._start_claim is not None
            request = asyncio.ensure_future(self._start(runtime, self._start_claim[0]))
            request.add_done_callback(_retrieve)
            self._start_request = request
        return await asyncio.shield(self._start_request)

    @contextlib.asynccontextmanager
    async def _closed_notices(self, runtime: LocalRuntime) -> AsyncIterator[Any]:
        """A subscription to this execution's close notification, closed on the way out."""
        closed_sub = await runtime.bus.subscribe(runtime.subjects.closed(self.flow_name, self.id))
        try:
            yield closed_sub
        finally:
            await closed_sub.close()

    async def _wait_closed(
        self, runtime: LocalRuntime, closed_sub: Any, *, look_first: bool = True
    ) -> tuple[ExecutionClosed, tuple[Snapshot, int] | None]:
        """The close notification, or the stored snapshot if the execution closed before
        ``closed_sub`` was listening (the notification is core NATS; KV is the truth).

        ``look_first=False`` skips reading the store up front, for a caller that subscribed
        before its own start was sent and answered (nothing can have been missed)."""
        if look_first:
            stored = await self._load(runtime)
            if stored is not None and stored[0].lifecycle == "closed":
                return _closed_from(stored[0]), stored
        for pause in _recheck_pauses():
            # The notification is core NATS: it is lost if it is sent while this process is
            # disconnected (a server restart). KV is the truth, so look there now and then.
            try:
                async with asyncio.timeout(pause):
                    data, _ = await closed_sub.next()
                closed = decode(closed_decoder, data)
                # A notice from a host that knew the stored revision carries all the meta the
                # handle needs; an older host's (revision 0) is completed from the store.
                return closed, (None if closed.revision else await self._load(runtime))
            except TimeoutError:
                stored = await self._load(runtime)
                if stored is not None and stored[0].lifecycle == "closed":
                    return _closed_from(stored[0]), stored

    async def _load(self, runtime: LocalRuntime) -> tuple[Snapshot, int] | None:
        key = runtime.subjects.execution_key(self.flow_name, self.id)
        loaded = await runtime.bus.load(key)
        if loaded is None:
            return None
        return decode(snapshot_decoder, loaded[0]), loaded[1]

    async def _start(self, runtime: LocalRuntime, initial_value: Any) -> Reply:
        from triggerbus.actors.flow_data import load_flow_data

        register_resources(self.id, self._resources)
        flow_data, flow_data_revision = await load_flow_data(runtime.bus, self.flow_name)
        message = StartExecution(
            id=f"{self.id}:start",
            execution_id=self.id,
            value=initial_value,
            fingerprint=self._flow.graph().fingerprint,
            concurrency=self._concurrency,
            auto_close=self._auto_close,
            auto_close_timeout=self._auto_close_timeout,
            skip_exceptions=self._skip_exceptions,
            resources=_serialisable(self._resources),
            sent_at=time.time(),
            flow_data=flow_data,
            flow_data_revision=flow_data_revision,
        )
        self._started = True
        self._status = "running"
        self._started_at = self._started_at or time.time()
        unanswered = Reply(ok=True, value=self.id)
        reply = await self._request(
            runtime, message, if_duplicate=unanswered,
            what=f"the start value of flow {self.flow_name!r}",
        )  # fmt: skip
        # Answered by the actor itself: the start ran from this message, so a close
        # notification cannot have preceded a subscription made before it was sent.
        self._start_answered = reply is not unanswered
        return reply

    # --- emits and state ------------------------------------------------------------------------

    async def async_emit(self, event: str, value: Any = None) -> list[Any] | None:
        """Emit ``event`` into the running execution and wait for its cascade's results.

        Returns the direct handlers' results in registration order, or ``None`` when nothing
        listens or the execution is closed.
        """
        if self._close_snapshot is not None:
            log.warning("emit_ignored", event_name=event, reason="execution closed")
            return None
        runtime = await self._runtime()
        message = self._emit_message(event, value)
        return await self._emit_answer(runtime, message, await self._send_request(runtime, message))

    def emit(self, event: str, value: Any = None) -> list[Any] | None:
        return run_sync(self.async_emit(event, value))

    async def async_emit_nowait(
        self, event: str, value: Any = None
    ) -> asyncio.Task[list[Any] | None] | None:
        """Emit ``event`` and return once it is stored, without waiting for its cascade.

        Returns a task that ends as ``async_emit`` would (the direct handlers' results, or the
        handler's failure), as TriggerFlow's does; awaiting it is optional. ``None`` when the
        execution is closed.
        """
        if self._close_snapshot is not None:
            log.warning("emit_ignored", event_name=event, reason="execution closed")
            return None
        runtime = await self._runtime()
        message = self._emit_message(event, value)
        sent = await self._send_request(runtime, message)
        answer = asyncio.get_running_loop().create_task(
            self._emit_answer(runtime, message, sent), name=f"triggerbus-emit-{message.id}"
        )
        answer.add_done_callback(_unawaited_failure_logged)
        return answer

    def _emit_message(self, event: str, value: Any) -> EmitEvent:
        return EmitEvent(
            id=f"{self.id}:emit:{uuid.uuid4().hex}", execution_id=self.id, event=event, value=value
        )

    async def _emit_answer(
        self, runtime: LocalRuntime, message: EmitEvent, sent: _SentRequest
    ) -> list[Any] | None:
        """The cascade's results, once the actor answers the sent emit."""
        reply = await self._reply(
            runtime, sent, recheck=lambda: self._stored_answer(runtime, message.id)
        )
        reply = self._accepted(reply)
        if reply.ignored:
            self._warn_ignored(f"event {message.event!r}", reply.ignored)
        return reply.value

    async def _emit_nowait_answered(self, event: str, value: Any) -> list[Any] | None:
        answer = await self.async_emit_nowait(event, value)
        return None if answer is None else await answer

    def emit_nowait(
        self, event: str, value: Any = None
    ) -> asyncio.Task[list[Any] | None] | concurrent.futures.Future[list[Any] | None] | None:
        """The sync form. Inside a running event loop it does not block: the emit is sent by
        a task on that loop, which it returns (as TriggerFlow does), ending with the
        cascade's results. Outside one it returns once the emit is stored, with a
        ``concurrent.futures.Future`` of those results (``None`` when closed)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            answer = run_sync(self.async_emit_nowait(event, value))
            return None if answer is None else future_of(answer)
        task = loop.create_task(self._emit_nowait_answered(event, value),
                                name=f"triggerbus-emit-nowait-{self.id}")  # fmt: skip
        task.add_done_callback(_unawaited_failure_logged)
        return task

    async def async_set_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._state("set", key, value, emit=emit)

    async def async_append_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._state("append", key, value, emit=emit)

    async def async_del_state(self, key: str, *, emit: bool = True) -> None:
        await self._state("delete", key, None, emit=emit)

    def set_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        run_sync(self.async_set_state(key, value, emit=emit))

    def append_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        run_sync(self.async_append_state(key, value, emit=emit))

    def del_state(self, key: str, *, emit: bool = True) -> None:
        run_sync(self.async_del_state(key, emit=emit))

    async def async_get_state(self, key: str | None = None, default: Any = None) -> Any:
        """The execution's state as last stored (``$final_result`` included once set), or
        one dotted key of it."""
        return await self._state_read(await self._runtime(), key, default)

    async def _state_read(self, runtime: LocalRuntime, key: str | None, default: Any) -> Any:
        state: dict[str, Any] = {}
        if self._close_snapshot is not None:
            state = self._close_snapshot
        else:
            stored = await self._load(runtime)
            if stored is not None:  # nothing stored yet: nothing written, nothing started
                self._refresh(stored)
                state = close_snapshot(stored[0])
        return _read_state(state, key, default)

    def get_state(self, key: str | None = None, default: Any = None) -> Any:
        if self._close_snapshot is not None:
            # Closed: the answer is in memory, no store read.
            return _read_state(self._close_snapshot, key, default)
        if in_running_loop():  # a store read on the sync API's own connection
            return run_detached(self._without_hosting(self._state_read, key, default))
        return run_sync(self.async_get_state(key, default))

    # Agently's deprecated names for the state.
    async_set_runtime_data = Renamed("execution", "async_set_state")
    async_append_runtime_data = Renamed("execution", "async_append_state")
    async_del_runtime_data = Renamed("execution", "async_del_state")
    get_runtime_data = Renamed("execution", "get_state")
    set_runtime_data = Renamed("execution", "set_state")
    append_runtime_data = Renamed("execution", "append_state")
    del_runtime_data = Renamed("execution", "del_state")

    async def _state(self, op: str, key: str, value: Any, *, emit: bool) -> None:
        runtime = await self._runtime()
        message = StateWritten(
            id=f"{self.id}:state:{uuid.uuid4().hex}",
            execution_id=self.id,
            op=op,  # type: ignore[arg-type]
            key=key,
            value=value,
            emit=emit,
        )
        reply = await self._answered(runtime, message)
        if reply.ignored:
            self._warn_ignored(f"state write {key!r}", reply.ignored)

    def _warn_ignored(self, what: str, lifecycle: str) -> None:
        if lifecycle in ("sealed", "closed", "open"):
            self._lifecycle = lifecycle
        log.warning("request_ignored", what=what, lifecycle=lifecycle, execution_id=self.id)
        warnings.warn(
            f"execution {self.id} of flow {self.flow_name!r} ignored {what} because it is "
            f"{lifecycle}",
            RuntimeWarning,
            stacklevel=3,
        )

    # --- flow data ------------------------------------------------------------------------------

    async def async_get_flow_data(self, key: str | None = None, default: Any = None) -> Any:
        """The flow's shared data (see ``TriggerFlow.async_get_flow_data``)."""
        return await self._flow.async_get_flow_data(key, default)

    async def async_set_flow_data(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._flow.async_set_flow_data(key, value, emit=emit)

    async def async_append_flow_data(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._flow.async_append_flow_data(key, value, emit=emit)

    async def async_del_flow_data(self, key: str, *, emit: bool = True) -> None:
        await self._flow.async_del_flow_data(key, emit=emit)

    def get_flow_data(self, key: str | None = None, default: Any = None) -> Any:
        return self._flow.get_flow_data(key, default)

    def set_flow_data(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._flow.set_flow_data(key, value, emit=emit)

    def append_flow_data(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._flow.append_flow_data(key, value, emit=emit)

    def del_flow_data(self, key: str, *, emit: bool = True) -> None:
        self._flow.del_flow_data(key, emit=emit)

    # --- the runtime stream, from outside ---------------------------------------------------------

    async def async_put_into_stream(self, item: Any) -> None:
        """Put ``item`` into this execution's runtime stream, as a chunk's
        ``data.async_put_into_stream`` does (readers see it in the order it was stored)."""
        if self._close_snapshot is not None:
            log.warning("stream_item_ignored", reason="execution closed", execution_id=self.id)
            return
        await self._append_stream(await self._runtime(), self._stream_item(item))

    def put_into_stream(self, item: Any) -> None:
        if in_running_loop() and self._close_snapshot is None:
            # A stream append needs no actor: done on the sync API's own connection.
            message = self._stream_item(item)
            run_detached(self._without_hosting(self._append_stream, message))
            return
        run_sync(self.async_put_into_stream(item))

    async def async_stop_stream(self) -> None:
        """End the runtime stream: readers stop after the items before it."""
        await self._append_stream(await self._runtime(), self._stream_end())

    def stop_stream(self) -> None:
        if in_running_loop():
            end = self._stream_end()
            run_detached(self._without_hosting(self._append_stream, end))
            return
        run_sync(self.async_stop_stream())

    def _stream_item(self, item: Any) -> StreamItem:
        return StreamItem(id=f"{self.id}:stream:{uuid.uuid4().hex}", execution_id=self.id,
                          value=item)  # fmt: skip

    def _stream_end(self) -> StreamEnded:
        return StreamEnded(id=f"{self.id}:stream:end", execution_id=self.id)

    async def _append_stream(
        self, runtime: LocalRuntime, message: StreamItem | StreamEnded
    ) -> None:
        payload = encode_sent(message, what=f"a stream item of flow {self.flow_name!r}")
        subject = runtime.subjects.stream(self.flow_name, self.id)
        await runtime.bus.publish(subject, payload, msg_id=message.id)

    # --- the result (Agently's compatibility API) -----------------------------------------------

    async def async_get_result(self, *, timeout: float | None = None) -> Any:
        """``$final_result`` as soon as the execution has one (it reached ``end()``), or the
        close snapshot once it closes without one; ``None``, with a warning, when neither
        comes within ``timeout`` seconds. Agently's compatibility API, with its semantics;
        Agently and we recommend ``close()`` and the state APIs."""
        if self._close_snapshot is None:
            runtime = await self._runtime()
            try:
                async with asyncio.timeout(timeout):
                    result = await self._result_or_close(runtime)
            except TimeoutError:
                warnings.warn(
                    f"execution {self.id!r} of flow {self.flow_name!r} has no result after "
                    f"{timeout} s (no end() reached, not closed): get_result() returns None. "
                    "Use close()/async_close(), or a longer timeout",
                    stacklevel=2,
                )
                return None
            if result is not _NOT_YET:
                return result
        return _closed_result(self._close_snapshot or {})

    async def _result_or_close(self, runtime: LocalRuntime) -> Any:
        """``$final_result`` once the stored state has it, or the close's answer once closed.
        Watches the store: an ``end()`` reached writes the result long before an idle
        execution auto-closes."""
        key = runtime.subjects.execution_key(self.flow_name, self.id)
        async with contextlib.aclosing(runtime.bus.watch(key)) as values:
            async for data, revision in values:
                found = self._result_of((decode(snapshot_decoder, data), revision))
                if found is not _NOT_YET:
                    return found
        raise BusError("the watch on the execution's snapshot ended (the connection closed)",
                       subject=key)  # fmt: skip

    def get_result(self, *, timeout: float | None = None) -> Any:
        if self._close_snapshot is not None:  # answered from memory: no loop to block
            return _closed_result(self._close_snapshot)
        if in_running_loop():
            found = run_detached(self._without_hosting(self._stored_result))
            if found is not _NOT_YET:
                return found
            raise LifecycleError(
                f"Execution.get_result() inside a running event loop answers only a result "
                f"already stored, and execution {self.id!r} of flow {self.flow_name!r} has "
                "none yet: waiting would block the loop its work may run on; use "
                "`await execution.async_get_result()`"
            )
        return run_sync(self.async_get_result(timeout=timeout))

    async def _stored_result(self, runtime: LocalRuntime) -> Any:
        stored = await self._load(runtime)
        return _NOT_YET if stored is None else self._result_of(stored)

    def _result_of(self, stored: tuple[Snapshot, int]) -> Any:
        """``$final_result`` or the close's answer (the handle takes the close), as the
        snapshot has them; ``_NOT_YET`` while it has neither."""
        snapshot = stored[0]
        if snapshot.lifecycle == "closed":
            self._on_closed((_closed_from(snapshot), stored))
            return _closed_result(self._close_snapshot or {})
        if snapshot.has_result:
            self._refresh(stored)
            return snapshot.result
        return _NOT_YET

    # --- seal -----------------------------------------------------------------------------------

    async def async_seal(self, *, reason: str = "manual") -> Execution:
        """Stop accepting events and state writes from outside; work in flight continues and
        may still emit. A sealed execution does not close by idleness: close it (or unseal)."""
        await self._seal(True, reason)
        return self

    async def async_unseal(self, *, reason: str = "manual") -> Execution:
        """Accept outside events again. A closed (or closing) execution stays as it is, with
        a warning."""
        await self._seal(False, reason)
        return self

    def seal(self, **options: Any) -> Execution:
        return run_sync(self.async_seal(**options))

    def unseal(self, **options: Any) -> Execution:
        return run_sync(self.async_unseal(**options))

    async def _seal(self, sealed: bool, reason: str) -> None:
        if self._close_snapshot is not None:
            if not sealed:
                self._warn_ignored("unseal", "closed")
            return
        runtime = await self._runtime()
        message = SealExecution(
            id=f"{self.id}:seal:{uuid.uuid4().hex}",
            execution_id=self.id,
            sealed=sealed,
            reason=reason,
        )
        reply = await self._answered(runtime, message)
        if reply.ignored:
            if not sealed:
                self._warn_ignored("unseal", reply.ignored)
            return
        self._lifecycle = str(reply.value)

    # --- close ----------------------------------------------------------------------------------

    async def async_close(
        self, *, reason: str = "manual", pending_interrupts: str = "reject"
    ) -> dict[str, Any]:
        """Seal, let in-flight work finish, close; returns the close snapshot. Idempotent.

        Raises:
            PendingInterruptsError: interrupts are waiting; resume them, or pass
                ``pending_interrupts="cancel"`` to close as ``cancelled``.
        """
        if pending_interrupts not in ("reject", "cancel"):
            raise ValueError("pending_interrupts must be 'reject' or 'cancel'")
        if self._close_snapshot is not None:
            return dict(self._close_snapshot)
        runtime = await self._runtime()
        if not self._started:
            self._started = True
        message = CloseExecution(
            id=f"{self.id}:close:{uuid.uuid4().hex}",
            execution_id=self.id,
            reason=reason,
            pending_interrupts=pending_interrupts,  # type: ignore[arg-type]
        )
        reply = await self._request(runtime, message, recheck=lambda: self._stored_close(runtime))
        if not reply.ok:
            if reply.error and reply.error.error_type == "PendingInterruptsError":
                self._status = "waiting"
                raise PendingInterruptsError(
                    reply.error.message, flow=self.flow_name, execution_id=self.id
                )
            if refuses_unknown_execution(reply.error):
                raise ExecutionNotFoundError(
                    f"execution {self.id!r} of flow {self.flow_name!r} was never started",
                    flow=self.flow_name,
                    execution_id=self.id,
                )
            self._raise(reply.error)
        snapshot = dict(reply.value or {})
        cancelled = "cancelled" if pending_interrupts == "cancel" else None
        self._mark_closed(snapshot, status=cancelled, reason=reason)
        self._refresh(await self._load(runtime))
        return dict(snapshot)

    def close(self, **options: Any) -> dict[str, Any]:
        if (
            self._close_snapshot is not None
            and set(options) <= {"reason", "pending_interrupts"}
            and options.get("pending_interrupts", "reject") in ("reject", "cancel")
        ):  # already closed (idempotent): answered from memory, no loop to block
            return dict(self._close_snapshot)
        return run_sync(self.async_close(**options))

    async def async_get_snapshot(self) -> dict[str, Any]:
        """The execution's stored snapshot, as the execution actor last wrote it."""
        runtime = await self._runtime()
        key = runtime.subjects.execution_key(self.flow_name, self.id)
        loaded = await runtime.bus.load(key)
        if loaded is None:
            raise ExecutionNotFoundError(
                f"no execution {self.id!r} in flow {self.flow_name!r}",
                flow=self.flow_name,
                execution_id=self.id,
            )
        return msgspec.to_builtins(decode(snapshot_decoder, loaded[0]))

    # --- human in the loop ----------------------------------------------------------------------

    async def async_continue_with(
        self,
        interrupt_id: str,
        value: Any = None,
        *,
        resume_request_id: str | None = None,
        actor: str | None = None,
    ) -> dict[str, Any] | None:
        """Answer a waiting interrupt (``data.pause_for``) with ``value`` and let the flow go on.

        Works from any process and any handle of the execution (``flow.create_execution(
        execution_id=...)``), any time later. Returns the interrupt record once the
        continuation has settled, as TriggerFlow's does: it paused again, ran to its end or
        failed (raised here), so ``is_waiting()`` right after says whether another pause
        waits. A repeated ``resume_request_id`` with the same value returns the record again
        and is applied once. On a closed or sealed execution it changes nothing, warns, and
        returns ``None`` (as TriggerFlow does).

        Raises:
            InterruptNotFoundError: the execution has no such interrupt.
            InterruptNotWaitingError: it was already resumed or cancelled, or
                ``resume_request_id`` was used before with a different value.
            ResumeLimitError: a ``resume_to="self"`` interrupt used up ``max_resumes``.
            ExecutionNotFoundError: the execution was never started.
            ChunkFailedError: a chunk of the continuation failed (the execution failed).
        """
        runtime = await self._runtime()
        message = ResumeInterrupt(
            id=f"{self.id}:resume:{uuid.uuid4().hex}",
            execution_id=self.id,
            interrupt_id=interrupt_id,
            value=value,
            resume_request_id=resume_request_id,
            actor=actor,
            sent_at=time.time(),
            settle=True,
        )
        reply = await self._request(
            runtime, message, what=f"the value for interrupt {interrupt_id!r}",
            recheck=lambda: self._stored_answer(runtime, message.id),
        )  # fmt: skip
        if reply.ignored:
            self._warn_ignored(f"continue_with({interrupt_id!r})", reply.ignored)
            return None
        if not reply.ok:
            raise self._interrupt_error(reply.error, interrupt_id)
        self._started = True
        # The settled cascade was stored before the answer: this read is the status after it
        # (waiting again, running on other branches, or closed), and the record as it stands.
        stored = await self._load(runtime)
        if stored is None:
            return dict(reply.value or {})
        self._take_view(*stored)
        interrupt = stored[0].interrupts.get(interrupt_id)
        return interrupt_record(interrupt) if interrupt is not None else None

    async def _stored_answer(self, runtime: LocalRuntime, message_id: str) -> Reply | None:
        """The answer to an awaited request whose reply was lost (replies are core NATS, and
        a disconnection drops them), from the stored snapshot: an emit's, a state write's or
        a settling resume's answer is remembered there when its cascade finishes (the last
        ``ANSWERS_KEPT`` of them), and a closed execution answers everything. None: no
        answer yet, keep waiting."""
        stored = await self._shared_load(runtime)
        if stored is None:
            return None
        snapshot = stored[0]
        status = snapshot.status
        if message_id in snapshot.answers:
            return Reply(ok=True, value=snapshot.answers[message_id], status=status)
        if snapshot.lifecycle != "closed":
            return None
        if message_id not in snapshot.applied:
            return Reply(ok=True, ignored="closed", status=status)  # closed before it arrived
        if snapshot.error is not None:
            return Reply(ok=False, error=snapshot.error, status=status)
        return Reply(ok=True, status=status)

    async def _stored_close(self, runtime: LocalRuntime) -> Reply | None:
        """A close request's answer when its reply was lost: the close snapshot, once the
        store says closed. None: not closed yet, keep waiting. (A close refused because
        interrupts wait is not remembered: its lost refusal is waited for.)"""
        stored = await self._shared_load(runtime)
        if stored is None or stored[0].lifecycle != "closed":
            return None
        snapshot = stored[0]
        return Reply(ok=True, value=close_snapshot(snapshot), status=snapshot.status)

    async def _shared_load(self, runtime: LocalRuntime) -> tuple[Snapshot, int] | None:
        """The stored snapshot for a recheck: one read, shared by every request of this
        handle that rechecks within ``RECHECK_SHARE_SECONDS`` of its start.

        Why: two thousand ``emit_nowait`` answers waiting on one execution all recheck after
        the same five seconds; two thousand reads of its snapshot at once (measured: a few
        hundred KB each, with its remembered answers and ids) overran the connection, and
        the server cut it as a slow consumer, again at every reconnect."""
        loop = asyncio.get_running_loop()
        shared = self._recheck_read
        now = time.monotonic()
        if shared is None or shared[0] is not loop or now - shared[2] > RECHECK_SHARE_SECONDS:
            shared = self._recheck_read = (loop, asyncio.ensure_future(self._load(runtime)), now)
        return await asyncio.shield(shared[1])

    def continue_with(self, interrupt_id: str, value: Any = None, **options: Any) -> Any:
        """Sync twin of ``async_continue_with``."""
        return run_sync(self.async_continue_with(interrupt_id, value, **options))

    async def async_get_interrupts(self) -> dict[str, dict[str, Any]]:
        """Every interrupt of the execution by id, as stored."""
        return await self._interrupts_read(await self._runtime())

    async def _interrupts_read(self, runtime: LocalRuntime) -> dict[str, dict[str, Any]]:
        snapshot = await self._stored(runtime)
        return {key: msgspec.to_builtins(i) for key, i in snapshot.interrupts.items()}

    async def async_get_pending_interrupts(self) -> dict[str, dict[str, Any]]:
        """The interrupts still waiting for ``continue_with``, by id."""
        interrupts = await self.async_get_interrupts()
        return {key: i for key, i in interrupts.items() if i["status"] == "waiting"}

    async def async_get_interrupt(self, interrupt_id: str) -> dict[str, Any] | None:
        return (await self.async_get_interrupts()).get(interrupt_id)

    def get_interrupts(self) -> dict[str, dict[str, Any]]:
        if in_running_loop():  # a store read on the sync API's own connection
            return run_detached(self._without_hosting(self._interrupts_read))
        return run_sync(self.async_get_interrupts())

    def get_pending_interrupts(self) -> dict[str, dict[str, Any]]:
        return {key: i for key, i in self.get_interrupts().items() if i["status"] == "waiting"}

    def get_interrupt(self, interrupt_id: str) -> dict[str, Any] | None:
        return self.get_interrupts().get(interrupt_id)

    def _interrupt_error(self, error: ErrorInfo | None, interrupt_id: str) -> ExecutionError:
        kinds: dict[str, type[InterruptError]] = {
            "InterruptNotFoundError": InterruptNotFoundError,
            "InterruptNotWaitingError": InterruptNotWaitingError,
            "ResumeConflictError": InterruptNotWaitingError,
            "ResumeLimitError": ResumeLimitError,
        }
        # A chunk's own exception of the same name is a chunk failure, not a refusal.
        kind = kinds.get(error.error_type) if error is not None and not error.chunk else None
        if kind is None or error is None:
            try:
                self._raise(error)
            except ExecutionError as exc:
                return exc
            raise AssertionError("unreachable")
        return kind(
            error.message, flow=self.flow_name, execution_id=self.id, interrupt_id=interrupt_id
        )

    # --- save and load ---------------------------------------------------------------------------

    async def async_save(self) -> dict[str, Any]:
        """The execution's stored snapshot as JSON-able data; ``load()`` restores it, in this
        store or another one."""
        snapshot = await self._stored(await self._runtime())
        return {
            "kind": SAVED_KIND,
            "v": 1,
            "flow": self.flow_name,
            "execution_id": self.id,
            "fingerprint": snapshot.fingerprint,
            "snapshot": msgspec.to_builtins(snapshot),
        }

    def save(self) -> dict[str, Any]:
        return run_sync(self.async_save())

    async def async_load(self, saved: dict[str, Any], *, replace: bool = False) -> Execution:
        """Restore a saved execution into the store and bind this handle to it.

        Loading what the store already holds only binds the handle. A different stored state
        is kept unless ``replace`` is true. Returns this handle: ``continue_with``, ``emit``
        and ``close`` then act on the restored execution, from any process.

        Raises:
            ExecutionError: ``saved`` is not a saved execution of this flow, or the store
                holds a different state of it and ``replace`` is false.
            FingerprintMismatchError: the execution was saved from a different definition.
        """
        if not isinstance(saved, dict) or saved.get("kind") != SAVED_KIND:
            raise ExecutionError(
                "load() takes what save() returned (a dict with kind "
                f"{SAVED_KIND!r})", flow=self.flow_name,
            )
        if saved.get("flow") != self.flow_name:
            raise ExecutionError(
                f"the saved execution belongs to flow {saved.get('flow')!r}, not "
                f"{self.flow_name!r}", flow=self.flow_name,
            )
        snapshot = decode(snapshot_decoder, msgspec.json.encode(saved.get("snapshot")))
        fingerprint = self._flow.graph().fingerprint
        if snapshot.fingerprint != fingerprint:
            raise FingerprintMismatchError(
                f"execution {snapshot.execution_id!r} was saved from a different definition of "
                f"flow {self.flow_name!r}; load it where the flow is defined the same way",
                flow=self.flow_name, expected=snapshot.fingerprint, actual=fingerprint,
            )
        runtime = await self._runtime()
        self.id = snapshot.execution_id
        key = runtime.subjects.execution_key(self.flow_name, self.id)
        stored = await self._load(runtime)
        if stored is None:
            revision = await runtime.bus.store(key, encode(snapshot), revision=None)
        elif stored[0] == snapshot:
            revision = stored[1]
        elif replace:
            revision = await runtime.bus.store(key, encode(snapshot), revision=stored[1])
        else:
            raise ExecutionError(
                f"execution {self.id!r} is already in the store with a different state; pass "
                "replace=True to overwrite it", flow=self.flow_name, execution_id=self.id,
            )
        self._adopt(snapshot, revision)
        return self

    def load(self, saved: dict[str, Any], **options: Any) -> Execution:
        return run_sync(self.async_load(saved, **options))

    def _adopt(self, snapshot: Snapshot, revision: int) -> None:
        """Take a stored snapshot as this handle's view."""
        self._started = snapshot.status != "created"
        self._start_claim = (None,) if self._started else None
        self._status = snapshot.status
        self._lifecycle = snapshot.lifecycle
        self._auto_close = snapshot.auto_close
        self._auto_close_timeout = snapshot.auto_close_timeout
        self._created_at = snapshot.created_at or self._created_at
        if snapshot.lifecycle == "closed":
            self._close_snapshot = close_snapshot(snapshot)
        self._refresh((snapshot, revision))

    async def _stored(self, runtime: LocalRuntime) -> Snapshot:
        stored = await self._load(runtime)
        if stored is None:
            raise ExecutionNotFoundError(
                f"no execution {self.id!r} in flow {self.flow_name!r}",
                flow=self.flow_name,
                execution_id=self.id,
            )
        self._refresh(stored)
        return stored[0]

    # --- runtime stream -----------------------------------------------------------------------

    def get_async_runtime_stream(
        self, initial_value: Any = None, *, timeout: float | None = 10.0
    ) -> AsyncIterator[Any]:
        """Yield the execution's stream items until the stream ends.

        Starts the execution (with ``initial_value``) when it has not been started. The stream
        is replayed from its first item, so nothing put before the reader attached is lost.
        ``timeout`` bounds the wait for each next item; when it passes, the stream ends.
        """
        return self._stream(initial_value, timeout=timeout)

    def get_runtime_stream(
        self, initial_value: Any = None, *, timeout: float | None = 10.0
    ) -> Any:
        return iterate_sync(self.get_async_runtime_stream(initial_value, timeout=timeout))

    async def _stream(self, initial_value: Any, *, timeout: float | None) -> AsyncIterator[Any]:
        # Claimed when the reader first asks for an item: a start asked for earlier wins.
        start = self._start_claim is None and self._close_snapshot is None
        if start:
            self._start_claim = (initial_value,)
        runtime = await self._runtime()
        subject = runtime.subjects.stream(self.flow_name, self.id)
        reader = runtime.bus.read_stream(subject)
        starter: asyncio.Task[Any] | None = None
        try:
            if start:
                # Owned here: awaited (or cancelled, then awaited) in the finally below.
                starter = asyncio.get_running_loop().create_task(
                    self.async_start(initial_value, wait_for_result=False)
                )
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        _, data = await anext(reader)
                except TimeoutError:
                    return
                message = decode(stream_decoder, data)
                if isinstance(message, StreamEnded):
                    return
                yield message.value
        finally:
            await reader.aclose()
            if starter is not None:
                if not starter.done():
                    starter.cancel()
                try:
                    await starter
                except (asyncio.CancelledError, ExecutionError):
                    pass

    # --- plumbing -------------------------------------------------------------------------------

    async def _without_hosting(
        self, work: Callable[..., Awaitable[T]], *arguments: Any
    ) -> T:
        """``work(runtime, *arguments)`` with the running loop's runtime, without hosting the
        flow on it: for a read or an append sent to the sync API's loop from inside another
        running loop."""
        return await work(await get_runtime(), *arguments)

    async def _runtime(self) -> LocalRuntime:
        runtime = await get_runtime()
        await runtime.ensure_flow(self._flow)
        # Remembered (weakly) for the status watch, which is started from a sync read and so
        # cannot ask for the runtime itself without risking opening a new one (see _home_of).
        self._home = (weakref.ref(asyncio.get_running_loop()), weakref.ref(runtime))
        return runtime

    async def _answered(self, runtime: LocalRuntime, message: Any) -> Reply:
        """``_request``, raising the error the actor answered with."""
        reply = await self._request(
            runtime, message, recheck=lambda: self._stored_answer(runtime, message.id)
        )
        return self._accepted(reply)

    def _accepted(self, reply: Reply) -> Reply:
        """``reply``, once its error is raised and its status taken."""
        if not reply.ok:
            self._raise(reply.error)
        if reply.status in ("running", "waiting") and self._close_snapshot is None:
            # The answer comes after the cascade is stored: an emit whose handler paused
            # leaves the execution waiting, and is_waiting() says so at once, as in TriggerFlow.
            # A background status read begun before it would be older: it is dropped.
            self._status = reply.status
            self._answers_seen += 1
        return reply

    async def _request(
        self,
        runtime: LocalRuntime,
        message: Any,
        *,
        if_duplicate: Reply | None = None,
        what: str | None = None,
        recheck: Callable[[], Awaitable[Reply | None]] | None = None,
    ) -> Reply:
        """Publish ``message`` and wait for the actor's answer.

        A message whose id the stream already holds (another handle sent the same start) was
        handled, or will be, without us: JetStream drops our copy, nobody will answer it, and
        ``if_duplicate`` is the answer instead. ``recheck``, consulted every
        ``RECHECK_SECONDS`` of waiting, finds an answer in the store when the reply was lost.
        """
        sent = await self._send_request(runtime, message, what=what)
        if not sent.fresh and if_duplicate is not None:
            runtime.replies.discard(sent.reply_to)
            return if_duplicate
        return await self._reply(runtime, sent, if_duplicate=if_duplicate, recheck=recheck)

    async def _send_request(
        self, runtime: LocalRuntime, message: Any, *, what: str | None = None
    ) -> _SentRequest:
        """Publish ``message`` addressed for an answer; the answer's subscription is open
        before the publish, so no answer can come before anyone waits for it. The caller
        waits with ``_reply``, which discards ``reply_to``; a failed publish discards it here."""
        reply_to, future = runtime.replies.open()
        try:
            addressed = msgspec.structs.replace(message, reply_to=reply_to)
            subject = runtime.subjects.mailbox(self.flow_name, self.id)
            with telemetry().publish(PublishInput(self.flow_name, subject, message)) as headers:
                fresh = await runtime.bus.publish_once(
                    subject, encode_sent(addressed, what=what), msg_id=message.id, headers=headers
                )
        except BaseException:
            runtime.replies.discard(reply_to)
            raise
        return _SentRequest(reply_to, future, fresh)

    async def _reply(
        self,
        runtime: LocalRuntime,
        sent: _SentRequest,
        *,
        if_duplicate: Reply | None = None,
        recheck: Callable[[], Awaitable[Reply | None]] | None = None,
    ) -> Reply:
        """The actor's answer to a sent request; its reply subject is discarded after."""
        try:
            for pause in _recheck_pauses():
                # Replies are core NATS and can be lost while this process is disconnected;
                # a start can be confirmed from the stored snapshot instead.
                try:
                    async with asyncio.timeout(pause):
                        return decode(reply_decoder, await asyncio.shield(sent.future))
                except TimeoutError:
                    if if_duplicate is not None and await self._load(runtime) is not None:
                        return if_duplicate
                    if recheck is not None and (found := await recheck()) is not None:
                        return found
            raise AssertionError("unreachable: the recheck pauses never end")
        finally:
            runtime.replies.discard(sent.reply_to)

    def _on_closed(
        self, outcome: tuple[ExecutionClosed, tuple[Snapshot, int] | None]
    ) -> dict[str, Any]:
        closed, stored = outcome
        self._mark_closed(closed.snapshot, status=closed.status, reason=None)
        if closed.revision:
            self._take_meta(closed.revision, closed.started_at, closed.closed_at,
                            closed.close_reason)  # fmt: skip
        self._refresh(stored)
        if closed.error is not None and closed.status == "failed":
            self._raise(closed.error)
        return dict(closed.snapshot)

    def _mark_closed(
        self, snapshot: dict[str, Any], *, status: str | None, reason: str | None
    ) -> None:
        self._close_snapshot = dict(snapshot)
        self._lifecycle = "closed"
        if status is not None:
            self._status = status
        elif self._status in ("created", "running"):
            self._status = "completed" if self._started else "cancelled"
        self._closed_at = time.time()
        self._close_reason = reason or self._close_reason
        forget_resources(self.id)

    def _refresh(self, stored: tuple[Snapshot, int] | None) -> None:
        """Take the stored snapshot's word for what the handle cannot see by itself, unless
        the handle has seen a later revision already (a read racing a status watch)."""
        if stored is None:
            return
        snapshot, revision = stored
        if (
            snapshot.status in ("running", "waiting")
            and self._close_snapshot is None
            and revision >= self._state_version
        ):
            self._status = snapshot.status
        closed = snapshot.lifecycle == "closed"
        self._take_meta(revision, snapshot.started_at, snapshot.closed_at if closed else None,
                        snapshot.close_reason if closed else None)  # fmt: skip

    def _take_meta(
        self,
        revision: int,
        started_at: float | None,
        closed_at: float | None,
        close_reason: str | None,
    ) -> None:
        """Meta the handle learns from the store or a close notice (empty values change
        nothing)."""
        self._state_version = max(self._state_version, revision)
        self._started_at = started_at or self._started_at
        self._closed_at = closed_at or self._closed_at
        self._close_reason = close_reason or self._close_reason

    def _raise(self, error: ErrorInfo | None) -> None:
        if error is None:
            raise ExecutionError("the execution refused the request", flow=self.flow_name,
                                 execution_id=self.id)
        if error.chunk:
            self._status = "failed"
            self._error = error
            # Also the chunk's own exception type when that is a built-in (a ValueError),
            # so code written against Agently's re-raised original still catches it.
            raise chunk_failed_class(error.error_type)(
                f"chunk {error.chunk!r} of flow {self.flow_name!r} raised "
                f"{error.error_type}: {error.message}",
                flow=self.flow_name,
                execution_id=self.id,
                chunk=error.chunk,
                error_type=error.error_type,
                error_message=error.message,
                remote_traceback=error.traceback,
            )
        if refuses_unknown_execution(error):
            raise ExecutionNotFoundError(
                f"execution {self.id!r} of flow {self.flow_name!r} has not been started; "
                "start it (async_start or a runtime stream) before emitting into it or "
                "writing its state",
                flow=self.flow_name,
                execution_id=self.id,
            )
        raise ExecutionClosedError(
            f"execution {self.id!r}: {error.error_type}: {error.message}",
            flow=self.flow_name,
            execution_id=self.id,
        )

    def __repr__(self) -> str:
        return f"<Execution {self.id} of {self.flow_name!r} {self._status}>"


def execution_id_for(idempotency_key: str | None) -> str | None:
    """The execution id an idempotency key names: the key itself when it is a valid id
    (letters, digits, ``-``, ``_``), else a digest of it. Starting twice with one key starts
    one execution, and both callers get its result."""
    if idempotency_key is None:
        return None
    if EXECUTION_ID.fullmatch(idempotency_key):
        return idempotency_key
    return "k" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def _recheck_pauses() -> Iterator[float]:
    """``RECHECK_SECONDS``, then doubling up to ``RECHECK_MAX_SECONDS``."""
    pause = RECHECK_SECONDS
    while True:
        yield pause
        pause = min(pause * 2, RECHECK_MAX_SECONDS)


class _SentRequest(NamedTuple):
    """A request published, its answer not yet taken."""

    reply_to: str
    future: asyncio.Future[bytes]
    fresh: bool
    """False when the stream already held the message's id (a duplicate, dropped)."""


def _unawaited_failure_logged(task: asyncio.Task[Any]) -> None:
    """An emit_nowait's task that nobody awaits must not fail in silence, nor in asyncio's
    "exception was never retrieved" at collection: a handler's failure is the execution's
    own (it fails or skips it, and says so); anything else (the bus, a refusal) is logged."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, ChunkFailedError):
        log.warning("emit_nowait_failed", task=task.get_name(), error=repr(error))


_NOT_YET = object()
"""No result yet: the execution closed without one (the close snapshot is the answer)."""


def _read_state(state: dict[str, Any], key: str | None, default: Any) -> Any:
    """The whole state (a copy), or one dotted key of it."""
    return dict(state) if key is None else get_path(state, key, default)


def _closed_result(snapshot: dict[str, Any]) -> Any:
    """A closed execution's result: ``$final_result``, or the close snapshot without one."""
    snapshot = dict(snapshot)
    return snapshot.get(FINAL_RESULT_KEY, snapshot)


def _closed_from(snapshot: Snapshot) -> ExecutionClosed:
    return ExecutionClosed(
        execution_id=snapshot.execution_id,
        status=snapshot.status,
        snapshot=close_snapshot(snapshot),
        error=snapshot.error,
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared request's error as seen; its callers re-raise it where they await it."""
    if not future.cancelled():
        future.exception()


def _serialisable(resources: dict[str, Any]) -> dict[str, Any]:
    """The resources that can ride in the start message to chunks in other processes.

    Held to the same rule as every value sent (:func:`encode_value`): a ``datetime`` or a
    ``set`` would arrive as a string or a list, a different object under the same name, so
    it stays with the chunks of this process, as a database client does."""
    travelling: dict[str, Any] = {}
    for key, value in resources.items():
        try:
            encode_value(value)
        except NotSerializable:
            continue
        travelling[key] = value
    return travelling
