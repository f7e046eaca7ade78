"""The durable engine behind the gateway, one room per concern behind the :class:`Engine` facade.

Import from here: ``from gateway.engine import Engine, EngineConfig, StartRequest``.
``gateway.engine.engine`` keeps the same names for older imports.
"""

from gateway.engine.config import EngineConfig
from gateway.engine.engine import Engine
from gateway.engine.starts import StartRequest, StartResult, fingerprint
from gateway.engine.wire import http_date, rfc3339_ms

__all__ = [
    "Engine",
    "EngineConfig",
    "StartRequest",
    "StartResult",
    "fingerprint",
    "http_date",
    "rfc3339_ms",
]
