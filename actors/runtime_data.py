"""What a chunk handler receives: TriggerFlow's runtime data, backed by messages.

Every effect a handler has travels as a message through a ``ChunkPort`` (the chunk host
implements it): state writes and emits to the execution mailbox, stream items to the runtime
stream. The handler reads state as of its dispatch plus its own writes.

Message ids are ``<execution>:<step>:<n>`` with ``n`` counting this attempt's effects, so a
retried attempt that does the same things sends the same ids and the actor applies them once.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from types import MappingProxyType
from typing import Any, Protocol

from triggerbus._deprecation import Renamed
from triggerbus._sendable import check_sendable
from triggerbus.actors.state_paths import apply_state_op, copy_value, get_path
from triggerbus.contracts.graph import TriggerType
from triggerbus.contracts.messages import (
    EmitEvent,
    InvokeChunk,
    PauseForInterrupt,
    Reply,
    ResumeContext,
    SignalRecord,
    StateWritten,
    StreamEnded,
    StreamItem,
)

_MISSING: Any = object()


class ChunkPort(Protocol):
    """The I/O a handler's effects go through; sends keep their order."""

    def send_nowait(
        self, message: EmitEvent | StateWritten | StreamItem | StreamEnded | PauseForInterrupt
    ) -> None:
        """Queue a message behind everything sent before it, without waiting."""

    async def send(self, message: EmitEvent | StateWritten | StreamItem | StreamEnded) -> None:
        """Send in order and wait until the bus has stored it."""

    async def request(self, message: EmitEvent | StateWritten) -> Any:
        """Send in order and wait for the actor's reply (the cascade's results)."""

    async def ask(self, message: PauseForInterrupt) -> Reply:
        """Send in order and return the actor's reply as it is (errors included)."""

    def run_blocking(self, coroutine: Any) -> Any:
        """From a sync handler's thread: run ``coroutine`` on the host loop and wait for it."""

    def change_flow_data(self, op: str, key: str, value: Any, emit: bool) -> Any:
        """Queue a flow-data change behind everything sent before it; await the result to
        wait until it is stored and announced."""

    @property
    def on_loop(self) -> bool:
        """True when called from the host's event loop (an async handler)."""


class _ReadsAsMapping(Mapping[str, Any]):
    """The reads of Agently's data namespaces, as a real read-only ``Mapping``: flows written
    for Agently iterate ``data.state``, index ``data.flow_state`` and pass them where a mapping
    is expected. Every read goes through ``to_dict()`` or ``get()``, which read the chunk's own
    copy (dispatch-time data plus its writes), never the bus.

    ``inherit`` is taken where Agently takes it and changes nothing: Agently's execution state
    and flow data have no parent layer to merge in, and triggerbus's have none either. Unlike
    Agently's ``inherit=False``, which hands out the live stored object, reads are copies
    either way: changing one is not a write.

    Being a ``Mapping``, a view equals any mapping with the same items (two ``data.state``
    accesses give two views, and they compare equal) and so cannot be hashed."""

    @abstractmethod
    def to_dict(self, *, inherit: bool = True) -> dict[str, Any]:
        """A copy of everything the view holds."""

    @abstractmethod
    def get(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        """A copy of the value at dotted ``key`` (everything for ``None``), else ``default``."""

    # keys/values/items/iteration/len read one copy, not one per key as Mapping's would.
    def keys(self) -> KeysView[str]:
        return self.to_dict().keys()

    def values(self) -> ValuesView[Any]:
        return self.to_dict().values()

    def items(self) -> ItemsView[str, Any]:
        return self.to_dict().items()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING


class StateView(_ReadsAsMapping):
    """``data.state``: reads see dispatch-time state plus this chunk's own writes."""

    def __init__(self, data: TriggerFlowRuntimeData) -> None:
        self._data = data

    def get(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        return self._data.get_state(key, default, inherit=inherit)

    def set(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._data.set_state(key, value, emit=emit)

    def append(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._data.append_state(key, value, emit=emit)

    def delete(self, key: str, *, emit: bool = True) -> None:
        self._data.del_state(key, emit=emit)

    async def async_get(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        return self._data.get_state(key, default, inherit=inherit)

    async def async_set(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._data.async_set_state(key, value, emit=emit)

    async def async_append(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._data.async_append_state(key, value, emit=emit)

    async def async_delete(self, key: str, *, emit: bool = True) -> None:
        await self._data.async_del_state(key, emit=emit)

    async_del = async_delete

    def to_dict(self, *, inherit: bool = True) -> dict[str, Any]:
        return self._data.get_state(None, inherit=inherit)


class FlowStateView(_ReadsAsMapping):
    """``data.flow_state``: the flow data (shared by every execution of the flow) as of this
    chunk's dispatch, plus this chunk's own changes."""

    def __init__(self, data: TriggerFlowRuntimeData) -> None:
        self._data = data

    def get(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        return self._data.get_flow_data(key, default, inherit=inherit)

    def set(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._data.set_flow_data(key, value, emit=emit)

    def append(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._data.append_flow_data(key, value, emit=emit)

    def delete(self, key: str, *, emit: bool = True) -> None:
        self._data.del_flow_data(key, emit=emit)

    async def async_get(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        return self._data.get_flow_data(key, default, inherit=inherit)

    async def async_set(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._data.async_set_flow_data(key, value, emit=emit)

    async def async_append(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._data.async_append_flow_data(key, value, emit=emit)

    async def async_delete(self, key: str, *, emit: bool = True) -> None:
        await self._data.async_del_flow_data(key, emit=emit)

    async_del = async_delete

    def to_dict(self, *, inherit: bool = True) -> dict[str, Any]:
        return self._data.get_flow_data(None, inherit=inherit)


class TriggerFlowPauseSignal(dict[str, Any]):
    """What ``pause_for`` returns (the interrupt record); a chunk returns it to pause."""

    @property
    def interrupt(self) -> dict[str, Any]:
        return dict(self)


class ResumeInfo:
    """``data.resume``: which interrupt this run continues, and the value it was given."""

    def __init__(self, context: ResumeContext | None) -> None:
        self.interrupt_id = context.interrupt_id if context else None
        self.value = context.value if context else None
        self.interrupt = copy.deepcopy(context.interrupt) if context else None
        self.origin_signal = copy.deepcopy(context.origin_signal) if context else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "interrupt_id": self.interrupt_id,
            "value": self.value,
            "interrupt": self.interrupt,
            "origin_signal": self.origin_signal,
        }

    def __repr__(self) -> str:
        return f"<ResumeInfo interrupt={self.interrupt_id!r}>"


class TriggerFlowRuntimeData:
    """The ``data`` argument of a chunk handler (TriggerFlow's name and surface)."""

    def __init__(
        self,
        invocation: InvokeChunk,
        port: ChunkPort,
        *,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self._invocation = invocation
        self._port = port
        # The invocation was decoded for this attempt alone: its state and flow data are
        # this object's to change, without a copy.
        self._state = invocation.state
        self._resources = dict(resources or {})
        self._flow_data = invocation.flow_data
        self._sequence = 0
        self.is_resume = invocation.resume is not None
        self.resume = ResumeInfo(invocation.resume)

    @property
    def state(self) -> StateView:
        """The execution's state as of dispatch, with this attempt's writes.

        A view made on each access, not kept: a view kept here would refer back to this
        object, a reference cycle that only the garbage collector can free, every attempt."""
        return StateView(self)

    @property
    def flow_state(self) -> FlowStateView:
        """The flow's data (a view made on each access, as ``state``)."""
        return FlowStateView(self)

    # --- what triggered this chunk --------------------------------------------------------

    @property
    def value(self) -> Any:
        return self._invocation.value

    @property
    def trigger_event(self) -> str:
        return self._invocation.trigger_event

    @property
    def event(self) -> str:
        return self._invocation.trigger_event

    @property
    def input(self) -> Any:
        return self._invocation.value

    @property
    def inputs(self) -> Any:
        return self._invocation.value

    @property
    def type(self) -> TriggerType:
        return self._invocation.trigger_type

    @property
    def trigger_type(self) -> TriggerType:
        return self._invocation.trigger_type

    @property
    def execution_id(self) -> str:
        return self._invocation.execution_id

    @property
    def chunk_name(self) -> str:
        return self._invocation.chunk

    @property
    def idempotency_key(self) -> str:
        """The same for every attempt of this invocation (a retry, a redelivery after a
        worker died) and different for every other run of any chunk: give it to the outside
        systems a chunk writes to, so a repeated attempt changes nothing there either."""
        return self._invocation.id

    # --- resources --------------------------------------------------------------------------

    @property
    def runtime_resources(self) -> dict[str, Any]:
        return self._resources

    @property
    def resources(self) -> Mapping[str, Any]:
        """A read-only view of the execution's runtime resources (``data.resources["db"]``)."""
        return MappingProxyType(self._resources)

    def get_resource(self, key: str, default: Any = None) -> Any:
        return self._resources.get(key, default)

    def require_resource(self, key: str) -> Any:
        if key not in self._resources:
            raise KeyError(
                f"execution {self.execution_id} has no runtime resource {key!r} for chunk "
                f"{self.chunk_name!r}; available resources: {sorted(self._resources)}. Pass it "
                "in runtime_resources= (objects that cannot be serialised reach only chunks "
                "hosted in the process that created the execution)"
            )
        return self._resources[key]

    # --- state ------------------------------------------------------------------------------

    def get_state(self, key: Any = None, default: Any = None, *, inherit: bool = True) -> Any:
        """The state as of dispatch plus this attempt's writes (a copy); ``inherit`` as in
        Agently, where it changes nothing for an execution's state (no parent layer)."""
        return _read(self._state, key, default)

    def set_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._write("set", key, value, emit=emit, wait=False)

    def append_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        self._write("append", key, value, emit=emit, wait=False)

    def del_state(self, key: str, *, emit: bool = True) -> None:
        self._write("delete", key, None, emit=emit, wait=False)

    async def async_set_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._write("set", key, value, emit=emit, wait=True)

    async def async_append_state(self, key: str, value: Any, *, emit: bool = True) -> None:
        await self._write("append", key, value, emit=emit, wait=True)

    async def async_del_state(self, key: str, *, emit: bool = True) -> None:
        await self._write("delete", key, None, emit=emit, wait=True)

    # Agently's deprecated names for the state.
    get_runtime_data = Renamed("data", "get_state")
    set_runtime_data = Renamed("data", "set_state")
    append_runtime_data = Renamed("data", "append_state")
    del_runtime_data = Renamed("data", "del_state")
    async_set_runtime_data = Renamed("data", "async_set_state")
    async_append_runtime_data = Renamed("data", "async_append_state")
    async_del_runtime_data = Renamed("data", "async_del_state")

    def _write(self, op: str, key: str, value: Any, *, emit: bool, wait: bool) -> Any:
        # Refused before this chunk's own view changes: a caller that catches the error must
        # not read back a value that was never sent.
        check_sendable(value, f"the state value for {key!r}", chunk=self.chunk_name)
        apply_state_op(self._state, op, key, copy.deepcopy(value))
        message = StateWritten(
            id=self._next_id(),
            execution_id=self.execution_id,
            op=op,  # type: ignore[arg-type]
            key=key,
            value=value,
            emit=emit,
            step=self._invocation.step,
            layers=self._invocation.layers,
        )
        if wait:
            return self._port.request(message) if emit else self._port.send(message)
        if self._port.on_loop:
            # An async handler's sync call cannot block the loop: it is sent in order and
            # returns at once, without waiting for the listeners' cascade.
            self._port.send_nowait(message)
        elif emit:
            # A sync handler runs in a thread and may block: wait for the cascade, as
            # TriggerFlow's setters do.
            self._port.run_blocking(self._port.request(message))
        else:
            self._port.run_blocking(self._port.send(message))
        return None

    # --- flow data (shared by every execution of the flow) ------------------------------------

    def get_flow_data(
        self, key: Any = None, default: Any = None, *, inherit: bool = True, **_: Any
    ) -> Any:
        """The flow data as of this chunk's dispatch, plus this chunk's own changes (a copy);
        ``inherit`` as in Agently, where the flow data has no parent layer either."""
        return _read(self._flow_data, key, default)

    def set_flow_data(self, key: str, value: Any, *, emit: bool = True, **_: Any) -> None:
        self._change_flow_data("set", key, value, emit=emit, wait=False)

    def append_flow_data(self, key: str, value: Any, *, emit: bool = True, **_: Any) -> None:
        self._change_flow_data("append", key, value, emit=emit, wait=False)

    def del_flow_data(self, key: str, *, emit: bool = True, **_: Any) -> None:
        self._change_flow_data("delete", key, None, emit=emit, wait=False)

    async def async_set_flow_data(
        self, key: str, value: Any, *, emit: bool = True, **_: Any
    ) -> None:
        await self._change_flow_data("set", key, value, emit=emit, wait=True)

    async def async_append_flow_data(
        self, key: str, value: Any, *, emit: bool = True, **_: Any
    ) -> None:
        await self._change_flow_data("append", key, value, emit=emit, wait=True)

    async def async_del_flow_data(self, key: str, *, emit: bool = True, **_: Any) -> None:
        await self._change_flow_data("delete", key, None, emit=emit, wait=True)

    def _change_flow_data(self, op: str, key: str, value: Any, *, emit: bool, wait: bool) -> Any:
        # Refused here, not in the send chain: a failed link there would fail every later send
        # and the attempt itself, although the handler caught the error.
        check_sendable(value, f"the flow data value for {key!r}", chunk=self.chunk_name)
        if op != "delete" or get_path(self._flow_data, key, _MISSING) is not _MISSING:
            apply_state_op(self._flow_data, op, key, copy.deepcopy(value))
        if wait:
            return self._port.change_flow_data(op, key, value, emit)
        if self._port.on_loop:
            self._port.change_flow_data(op, key, value, emit)
        else:
            self._port.run_blocking(_change_on_loop(self._port, op, key, value, emit))
        return None

    # --- events -----------------------------------------------------------------------------

    async def async_emit(self, event: str, value: Any = None, **_: Any) -> list[Any] | None:
        """Emit ``event`` and wait for the whole cascade; returns the direct handlers' results
        in registration order, or ``None`` when nothing listens."""
        return await self._port.request(self._emit_message(event, value, awaited=True))

    def emit(self, event: str, value: Any = None, **_: Any) -> list[Any] | None:
        """From a sync handler: like ``async_emit``. From an async handler: sends in order and
        returns at once (the loop cannot block); use ``await data.async_emit`` for results."""
        if self._port.on_loop:
            self._port.send_nowait(self._emit_message(event, value, awaited=False))
            return None
        return self._port.run_blocking(self.async_emit(event, value))

    async def async_emit_nowait(self, event: str, value: Any = None) -> None:
        await self._port.send(self._emit_message(event, value, awaited=False))

    def emit_nowait(self, event: str, value: Any = None) -> None:
        self._send_sync(self._emit_message(event, value, awaited=False))

    def _emit_message(self, event: str, value: Any, *, awaited: bool) -> EmitEvent:
        return EmitEvent(
            id=self._next_id(),
            execution_id=self.execution_id,
            event=event,
            value=value,
            step=self._invocation.step if awaited else None,
            layers=self._invocation.layers,
        )

    # --- runtime stream -----------------------------------------------------------------------

    def put_into_stream(self, item: Any) -> None:
        self._send_sync(self._stream_item(item))

    async def async_put_into_stream(self, item: Any) -> None:
        await self._port.send(self._stream_item(item))

    put = put_into_stream
    async_put = async_put_into_stream

    def stop_stream(self) -> None:
        if self._invocation.stream_to is None:  # a sub-flow does not end its parent's stream
            self._send_sync(self._stream_end())

    async def async_stop_stream(self) -> None:
        if self._invocation.stream_to is None:
            await self._port.send(self._stream_end())

    def _stream_item(self, item: Any) -> StreamItem:
        return StreamItem(id=self._next_id(), execution_id=self.execution_id, value=item)

    def _stream_end(self) -> StreamEnded:
        return StreamEnded(
            id=f"{self.execution_id}:stream:end", execution_id=self.execution_id, reason="stopped"
        )

    # --- human in the loop -------------------------------------------------------------------

    async def async_pause_for(
        self,
        *,
        type: str = "pause",
        payload: Any = None,
        resume_event: str | None = None,
        interrupt_id: str | None = None,
        resume_to: Any = None,
        max_resumes: int | None = 1,
        **_: Any,
    ) -> TriggerFlowPauseSignal:
        """Wait for outside input: the execution records an interrupt, turns ``waiting`` and
        puts a ``pause`` item into the stream; return the result from the chunk. The flow goes
        on when someone calls ``continue_with(interrupt_id, value)``: with ``resume_to="next"``
        (the default) the chunk's downstream receives ``value`` as this chunk's result; with
        ``"self"`` this chunk runs again with ``data.is_resume`` and ``data.resume.value``;
        with ``resume_event`` (or ``{"event": name}``) that event is emitted with ``value``.

        Raises:
            ValueError: ``max_resumes`` is not a non-negative integer or ``None``.
            RuntimeError: the execution refused the pause (closed, or a ``"self"`` interrupt
                reached ``max_resumes``).
        """
        message = self._pause_message(type, payload, resume_event, interrupt_id, resume_to,
                                      max_resumes)  # fmt: skip
        return _paused(await self._port.ask(message))

    def pause_for(self, **options: Any) -> TriggerFlowPauseSignal:
        """Sync form of ``async_pause_for``. From an async handler it cannot wait: the pause
        is sent in order and the record built here is returned."""
        if not self._port.on_loop:
            return self._port.run_blocking(self.async_pause_for(**options))
        message = self._pause_message(
            options.get("type", "pause"),
            options.get("payload"),
            options.get("resume_event"),
            options.get("interrupt_id"),
            options.get("resume_to"),
            options.get("max_resumes", 1),
        )
        self._port.send_nowait(message)
        return TriggerFlowPauseSignal(
            id=message.interrupt_id,
            type=message.type,
            payload=message.payload,
            resume_to=message.resume_to,
            resume_event=message.resume_event,
            status="waiting",
        )

    def _pause_message(
        self,
        type: str,
        payload: Any,
        resume_event: str | None,
        interrupt_id: str | None,
        resume_to: Any,
        max_resumes: int | None,
    ) -> PauseForInterrupt:
        if max_resumes is not None and (
            not isinstance(max_resumes, int) or isinstance(max_resumes, bool) or max_resumes < 0
        ):
            raise ValueError("max_resumes must be a non-negative integer or None")
        if resume_to is None:
            resume_to = {"event": resume_event} if resume_event else "next"
        message_id = self._next_id()
        resumed = self._invocation.resume
        # A chunk resumed to itself that pauses again carries its resume count on, unless it
        # pauses under a different explicit interrupt id (a new gate with its own budget).
        inherited = 0
        if resumed is not None and interrupt_id in (None, resumed.interrupt_id):
            inherited = resumed.resume_count
        return PauseForInterrupt(
            id=message_id,
            execution_id=self.execution_id,
            step=self._invocation.step,
            interrupt_id=interrupt_id or f"interrupt-{self._invocation.step}-{self._sequence}",
            type=type,
            payload=payload,
            resume_to=resume_to,
            resume_event=resume_event,
            max_resumes=max_resumes,
            resume_count=inherited,
            source_signal=SignalRecord(
                trigger_event=self._invocation.trigger_event,
                trigger_type=self._invocation.trigger_type,
                value=self._invocation.value,
                layers=self._invocation.layers,
            ),
        )

    # --- plumbing ---------------------------------------------------------------------------

    def _send_sync(self, message: EmitEvent | StateWritten | StreamItem | StreamEnded) -> None:
        if self._port.on_loop:
            self._port.send_nowait(message)
        else:
            self._port.run_blocking(self._port.send(message))

    def _next_id(self) -> str:
        self._sequence += 1
        return f"{self.execution_id}:{self._invocation.step}:{self._sequence}"

    def __repr__(self) -> str:
        return (
            f"<TriggerFlowRuntimeData chunk={self.chunk_name!r} "
            f"execution={self.execution_id!r} trigger={self.trigger_event!r}>"
        )


def _paused(reply: Reply) -> TriggerFlowPauseSignal:
    if not reply.ok:
        reason = reply.error.message if reply.error else "the execution refused the pause"
        raise RuntimeError(reason)
    return TriggerFlowPauseSignal(reply.value or {})


def _read(source: dict[str, Any], key: Any, default: Any) -> Any:
    """A copy of the value at dotted ``key`` in ``source`` (all of it for ``None``), else
    ``default``. Keys are strings, as JSON's are: any other key names nothing and reads
    ``default`` (``view[0]`` a ``KeyError``), as in Agently, instead of failing in the split."""
    if key is None:
        return copy_value(source)
    if not isinstance(key, str):
        return default
    value = get_path(source, key, _MISSING)
    return default if value is _MISSING else copy_value(value)


async def _change_on_loop(port: ChunkPort, op: str, key: str, value: Any, emit: bool) -> None:
    """Runs on the host loop: the port's chain is not thread-safe."""
    await port.change_flow_data(op, key, value, emit)


TriggerFlowEventData = TriggerFlowRuntimeData
"""TriggerFlow's older name for the same object."""
