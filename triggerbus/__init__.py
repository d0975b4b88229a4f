"""triggerbus: Agently's TriggerFlow as an actor-model runtime on NATS.

Change ``from agently import TriggerFlow`` to ``from triggerbus import TriggerFlow``; with no
``TRIGGERBUS_NATS_URL`` set, the first use starts a private nats-server and hosts every chunk in
this process. Point every process at one NATS and run ``triggerbus worker`` to spread chunks.
"""

from __future__ import annotations

from triggerbus.actors.runtime_data import TriggerFlowEventData, TriggerFlowRuntimeData
from triggerbus.config import Settings
from triggerbus.errors import (
    BusError,
    BusUnavailableError,
    ChunkFailedError,
    ConfigurationError,
    ContractError,
    ExecutionClosedError,
    ExecutionError,
    ExecutionNotFoundError,
    FingerprintMismatchError,
    FlowDefinitionError,
    InterruptError,
    InterruptNotFoundError,
    InterruptNotWaitingError,
    LifecycleError,
    PayloadTooLargeError,
    PendingInterruptsError,
    ProvisioningDriftError,
    ResumeLimitError,
    RevisionConflictError,
    ServerTooOldError,
    TriggerbusError,
    UnsupportedVersionError,
    ValueNotSerializableError,
)
from triggerbus.execution import Execution, ExecutionResult
from triggerbus.flow import TriggerFlow, TriggerFlowChunk, TriggerFlowProcess

__all__ = [
    "BusError",
    "BusUnavailableError",
    "ChunkFailedError",
    "ConfigurationError",
    "ContractError",
    "Execution",
    "ExecutionClosedError",
    "ExecutionError",
    "ExecutionNotFoundError",
    "ExecutionResult",
    "FingerprintMismatchError",
    "FlowDefinitionError",
    "InterruptError",
    "InterruptNotFoundError",
    "InterruptNotWaitingError",
    "LifecycleError",
    "PayloadTooLargeError",
    "PendingInterruptsError",
    "ProvisioningDriftError",
    "ResumeLimitError",
    "RevisionConflictError",
    "ServerTooOldError",
    "Settings",
    "TriggerFlow",
    "TriggerFlowChunk",
    "TriggerFlowEventData",
    "TriggerFlowProcess",
    "TriggerFlowRuntimeData",
    "TriggerbusError",
    "UnsupportedVersionError",
    "ValueNotSerializableError",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("triggerbus."):
        try:
            _obj.__module__ = "triggerbus"
        except (AttributeError, TypeError):
            pass
del _name, _obj
