"""The domain: operations, their states and events, agent specs, dispatch outcomes, errors.

Pure data and protocols, no I/O: this package imports nothing from the rest of swarmgate and
no web framework or database driver (``lint-imports`` checks it). The store, the registry,
the adapters, the engine and the HTTP layer all speak in these types.
"""

from gateway.domain.clock import Clock, ManualClock, SystemClock
from gateway.domain.dispatch import (
    AgentAdapter,
    CancelRequest,
    DispatchRequest,
    HttpResponse,
    Outcome,
    OutcomeKind,
    Transport,
    TransportError,
)
from gateway.domain.errors import (
    ConfigError,
    DataRejected,
    HandlerError,
    HandlerErrorType,
    NotFound,
    OperationError,
    StoreError,
    StoreFull,
    StoreUnavailable,
    SwarmgateError,
    UniqueViolation,
    WriteConflict,
)
from gateway.domain.model import (
    CallbackDelivery,
    CallerSecrets,
    Completion,
    DeliveryState,
    Event,
    IdempotencyRecord,
    Operation,
    OperationState,
    StepRecord,
    Work,
    failure,
    operation_error,
)
from gateway.domain.ports import Created, NewOperation, Store
from gateway.domain.specs import AdapterKind, AgentSpec, OperationSpec, RetryPolicy

__all__ = [
    "AdapterKind",
    "AgentAdapter",
    "AgentSpec",
    "CallbackDelivery",
    "CallerSecrets",
    "CancelRequest",
    "Clock",
    "Completion",
    "ConfigError",
    "Created",
    "DataRejected",
    "DeliveryState",
    "DispatchRequest",
    "Event",
    "HandlerError",
    "HandlerErrorType",
    "HttpResponse",
    "IdempotencyRecord",
    "ManualClock",
    "NewOperation",
    "NotFound",
    "Operation",
    "OperationError",
    "OperationSpec",
    "OperationState",
    "Outcome",
    "OutcomeKind",
    "RetryPolicy",
    "StepRecord",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "SwarmgateError",
    "SystemClock",
    "Transport",
    "TransportError",
    "UniqueViolation",
    "Work",
    "WriteConflict",
    "failure",
    "operation_error",
]
