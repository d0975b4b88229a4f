"""Every error triggerbus raises, rooted in one class so one ``except`` catches them all.

    TriggerbusError
    ├── ConfigurationError          bad settings or a missing nats-server binary
    ├── BusError                    talking to NATS failed
    │   ├── BusUnavailableError     no server reachable at the configured URL
    │   ├── ServerTooOldError       the server lacks a feature we need (JetStream, version)
    │   ├── ProvisioningDriftError  an existing stream/consumer/bucket differs from ours
    │   ├── PayloadTooLargeError    a message larger than the server's max_payload; never retried
    │   └── RevisionConflictError   a compare-and-set write lost the race; retry from the new state
    ├── ContractError               a wire message failed strict decoding
    │   └── UnsupportedVersionError a message from a newer writer than this reader
    ├── ValueNotSerializableError   a value to send is not JSON-able (also a TypeError)
    ├── FlowDefinitionError         the builder was used wrongly
    ├── FingerprintMismatchError    a process built a different graph than the execution's
    ├── ExecutionError              an execution could not do what was asked
    │   ├── ExecutionNotFoundError
    │   ├── ExecutionClosedError
    │   ├── ChunkFailedError        a chunk raised; carries the remote type, message, traceback
    │   │                           (also that type when it is a built-in, e.g. a ValueError)
    │   ├── PendingInterruptsError  close refused while interrupts wait (also a RuntimeError)
    │   └── InterruptError          continue_with refused; carries ``interrupt_id``
    │       ├── InterruptNotFoundError    no such interrupt (also a KeyError)
    │       ├── InterruptNotWaitingError  already resumed or cancelled, or a conflicting
    │       │                             resume_request_id (also a ValueError)
    │       └── ResumeLimitError          a "self" interrupt used up max_resumes (RuntimeError)
    └── LifecycleError              a handle or host used out of order (closed, started twice)

This module imports nothing of the project, so any layer may raise these.
"""

from __future__ import annotations

import builtins
from typing import cast


class TriggerbusError(Exception):
    """Root of every triggerbus error."""


class ConfigurationError(TriggerbusError):
    """Settings are invalid, or something the configuration needs is missing."""


class BusError(TriggerbusError):
    """A NATS operation failed; ``subject`` names where, when known."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class BusUnavailableError(BusError):
    """No NATS server answered at ``url``."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ServerTooOldError(BusError):
    """The server is missing a feature triggerbus refuses to run without."""


class ProvisioningDriftError(BusError):
    """An existing stream, consumer or bucket has a configuration that differs from ours."""

    def __init__(self, message: str, *, name: str, differences: dict[str, tuple[object, object]]):
        super().__init__(message)
        self.name = name
        self.differences = differences


class RevisionConflictError(BusError):
    """A compare-and-set write found a newer revision; reload and retry."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class PayloadTooLargeError(BusError):
    """A message is larger than the server accepts (its ``max_payload``, 1 MB by default).

    Never retried: the same bytes can never fit."""


class ContractError(TriggerbusError):
    """A wire message did not decode against its contract."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class UnsupportedVersionError(ContractError):
    """The message's schema version is newer than this reader understands."""


class ValueNotSerializableError(TriggerbusError, TypeError):
    """A value that must cross the bus cannot be encoded as JSON by msgspec: a type it does not
    know, or a value that refers to itself. Raised where the value is handed over (a start,
    ``set_state``, ``emit``, a stream item, flow data), before anything is sent or changed."""

    def __init__(self, message: str, *, chunk: str | None = None, type_name: str = "") -> None:
        super().__init__(message)
        self.chunk = chunk
        self.type_name = type_name


class FlowDefinitionError(TriggerbusError):
    """The flow builder was called in a way that cannot describe a flow."""


class FingerprintMismatchError(TriggerbusError):
    """This process built a different flow graph than the one the execution runs."""

    def __init__(self, message: str, *, flow: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.flow = flow
        self.expected = expected
        self.actual = actual


class ExecutionError(TriggerbusError):
    """An execution could not do what was asked."""

    def __init__(self, message: str, *, flow: str = "", execution_id: str = "") -> None:
        super().__init__(message)
        self.flow = flow
        self.execution_id = execution_id


class ExecutionNotFoundError(ExecutionError):
    """No snapshot exists for the execution."""


class ExecutionClosedError(ExecutionError):
    """The execution is closed and accepts nothing more."""


class ChunkFailedError(ExecutionError):
    """A chunk raised; the remote exception's type, message and traceback travel with it."""

    def __init__(
        self,
        message: str,
        *,
        flow: str = "",
        execution_id: str = "",
        chunk: str,
        error_type: str,
        error_message: str,
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message, flow=flow, execution_id=execution_id)
        self.chunk = chunk
        self.error_type = error_type
        self.error_message = error_message
        self.remote_traceback = remote_traceback


_NOT_REBUILT = frozenset({"StopIteration", "StopAsyncIteration"})
"""Built-ins a chunk failure is never also: raised through a coroutine or an async generator
(``async_start``, a runtime stream), Python turns them into a RuntimeError (PEP 479)."""

_CHUNK_FAILED_CLASSES: dict[type[Exception], type[ChunkFailedError]] = {}


def chunk_failed_class(error_type: str) -> type[ChunkFailedError]:
    """The class a chunk failure whose remote type is ``error_type`` is raised as.

    ChunkFailedError, and also that type when it names a built-in exception class, so
    ``except ValueError`` around a start catches a chunk's ValueError as it does in Agently,
    where the original exception reaches the caller. ``error_type`` comes off the bus and is
    untrusted: it is only looked up in ``builtins``, never imported. Any other type (a class
    of the user's or of a library) may not exist in this process and gives plain
    ChunkFailedError, as do built-ins that cannot be one (UnicodeDecodeError and
    ExceptionGroup need constructor arguments a message does not give; see ``_NOT_REBUILT``).
    Each class is built once.
    """
    kind = getattr(builtins, error_type, None) if error_type.isidentifier() else None
    if (
        not isinstance(kind, type)
        or not issubclass(kind, Exception)
        or kind.__module__ != "builtins"
        or issubclass(ChunkFailedError, kind)
        or error_type in _NOT_REBUILT
    ):
        return ChunkFailedError
    known = _CHUNK_FAILED_CLASSES.get(kind)
    if known is None:  # two threads racing here keep the first one's class
        known = _CHUNK_FAILED_CLASSES.setdefault(kind, _combined(kind))
    return known


def _combined(kind: type[Exception]) -> type[ChunkFailedError]:
    name = f"{ChunkFailedError.__name__}[{kind.__name__}]"
    namespace = {
        "__module__": ChunkFailedError.__module__,
        "__qualname__": name,
        "__doc__": f"A chunk raised {kind.__name__}: a ChunkFailedError that is also one.",
        # ChunkFailedError's message, not the built-in's rendering (KeyError quotes it).
        "__str__": BaseException.__str__,
    }
    try:
        combined = cast(type[ChunkFailedError], type(name, (ChunkFailedError, kind), namespace))
        probe = combined("probe", chunk="probe", error_type=kind.__name__, error_message="")
    except TypeError:  # a layout or a constructor that does not fit ChunkFailedError's
        return ChunkFailedError
    return combined if str(probe) == "probe" else ChunkFailedError


class PendingInterruptsError(ExecutionError, RuntimeError):
    """The execution waits on interrupts and was asked to close without cancelling them."""


class InterruptError(ExecutionError):
    """``continue_with`` was refused; ``interrupt_id`` names the interrupt."""

    def __init__(
        self, message: str, *, flow: str = "", execution_id: str = "", interrupt_id: str = ""
    ) -> None:
        super().__init__(message, flow=flow, execution_id=execution_id)
        self.interrupt_id = interrupt_id


class InterruptNotFoundError(InterruptError, KeyError):
    """The execution has no interrupt with that id."""

    __str__ = BaseException.__str__


class InterruptNotWaitingError(InterruptError, ValueError):
    """The interrupt was already resumed or cancelled, or its ``resume_request_id`` was used
    with a different value."""


class ResumeLimitError(InterruptError, RuntimeError):
    """A ``resume_to="self"`` interrupt was resumed ``max_resumes`` times already."""


class LifecycleError(TriggerbusError):
    """An object was used out of order: started twice, or used after it was closed."""
