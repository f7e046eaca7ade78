"""Gateway settings from environment variables (``SWARMGATE_*``)."""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.errors import ConfigError

# SWARMGATE_WRITE_LINGER_S=auto with several workers (README, "Issue 17: the tenth pass")
AUTO_WRITE_LINGER_S = 0.002


def _f(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _cycles(env: Mapping[str, str], name: str) -> int | None:
    """``auto`` (or unset): None; ``off``/``false``/``0``: 0; a whole number >= 1: that many."""
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "auto"):
        return None
    if raw in ("off", "false", "no"):
        return 0
    if raw.isdigit() and int(raw) <= 64:
        return int(raw)
    raise ConfigError(f"{name} must be auto, off or a whole number of statements 0-64, got {raw!r}")


def _linger(env: Mapping[str, str], name: str) -> float | None:
    """``auto`` (or unset): None; otherwise seconds, 0 to 0.1."""
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "auto"):
        return None
    value = _f({name: raw}, name, 0.0)
    if not 0 <= value <= 0.1:
        raise ConfigError(f"{name} must be auto or 0 to 0.1 (seconds), got {raw!r}")
    return value


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value.lower() not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _check_cidrs(cidrs: tuple[str, ...]) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"SWARMGATE_ALLOW_CIDRS: {cidr!r} is not a network; give comma-separated CIDRs "
                "such as 10.0.0.0/8,127.0.0.1/32"
            ) from None


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str = "sqlite:///var/swarmgate.db"
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    replica_id: str = field(default_factory=lambda: f"gw-{uuid.uuid4().hex[:12]}")
    agents_file: str | None = None
    allow_cidrs: tuple[str, ...] = ()
    lease_s: float = 30.0
    poll_interval_s: float = 0.5
    sync_wait_s: float = 5.0
    callback_ttl_s: float = 24 * 3600.0
    callback_timeout_s: float = 15.0
    callback_retry_initial_s: float = 1.0
    callback_retry_max_s: float = 3600.0
    idempotency_ttl_s: float = 24 * 3600.0
    max_inflight: int = 256
    auth_mode: str = "hs256"
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwt_issuer: str = "swarmgate"
    jwt_audience: str = "swarmgate"
    secret: str | None = None
    max_body_bytes: int = 2 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024  # an agent's or receiver's answer
    max_pending_starts: int = 1000
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 60.0
    shutdown_grace_s: float = 5.0
    task_poll_s: float = 5.0
    cancel_grace_s: float = 300.0
    endpoint_down_s: float = 30.0  # a pool endpoint is skipped so long after a connection error
    pull_recheck_s: float = 1.0  # a pull worker's long poll re-checks the store this often
    worker_live_s: float = 120.0  # GET /api/agents/{name} lists workers that polled this recently
    event_loop: str = "uvloop"
    log_format: str = "json"
    log_level: str = "INFO"
    sqlite_synchronous: str = "FULL"
    # "async": a callback's delivery ack commits without waiting for the disk flush (see the
    # README, "How an operation flows", step 4); "durable": flushed like every other commit
    callback_ack_commit: str = "async"
    callback_ack_linger_s: float = 0.05  # a batch of acks fills this long before it commits
    # under load, a batch of starts or completions fills this long before it commits (0: off):
    # less CPU per operation at saturation, later answers in between (README, "Issue 17: a
    # slower box" and "the tenth pass"). None ("auto"): off with one worker, 2 ms with several
    write_linger_s: float | None = None
    # PostgreSQL: starts, completions and callback acks waiting at once share one statement and
    # one commit per cycle (gateway.store.pg_cycles). None ("auto"): at most 2 such statements in
    # flight, in each process (measured: README, "Issue 17: the ninth pass" and "the tenth
    # pass"); N: at most N; 0 ("off"): one statement per kind, as before cycles (a baseline)
    write_cycles: int | None = None
    db_pool_size: int = 20
    workers: int = 1
    reuse_port: bool = False
    public_cards: bool = True  # A2A agent cards without a token (discovery); off: ops:read
    access_log: bool = False
    # the hot routes (start, heartbeat, steps, completions) on the lean HTTP/1.1 server of
    # gateway.http.hotpath; off: every request on aiohttp's server
    hot_path: bool = True
    # the cyclic garbage collector's first threshold, after the start-up objects are frozen out
    # of its scans (gc.freeze); 0: Python's defaults (700, no freeze). See gateway.app.tune_gc.
    gc_threshold: int = 20_000
    mcp_wait_s: float = 60.0  # /mcp: tools/call without a task, and tasks/result, wait this long
    startup_db_wait_s: float = 60.0  # how long a starting replica retries an unreachable DB
    body_timeout_s: float = 10.0  # a start's body must arrive within this (before admission)
    # a keep-alive connection is closed after this many answers (Connection: close; 0: never),
    # so clients spread over the workers again after one started later or anew
    keepalive_requests: int = 1000
    otel_endpoint: str | None = None  # OTLP/HTTP base URL; None: no tracing
    otel_service_name: str = "swarmgate"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def store_options(self) -> dict[str, Any]:
        """The keyword arguments of the gateway's ``SqlStore`` (besides its URL)."""
        return {
            "pool_size": self.db_pool_size,
            "sqlite_synchronous": self.sqlite_synchronous,
            "ack_commit": self.callback_ack_commit,
            "write_cycles": self.write_cycles_in_flight,
        }

    @property
    def write_linger_in_effect_s(self) -> float:
        """``write_linger_s`` resolved: "auto" is off with one worker and 2 ms with several
        (each worker sees 1/N of the writes, so its batches shrink; the linger fills them)."""
        if self.write_linger_s is not None:
            return self.write_linger_s
        return 0.0 if self.workers <= 1 else AUTO_WRITE_LINGER_S

    @property
    def write_cycles_in_flight(self) -> int:
        """``write_cycles`` resolved: "auto" is 2 statements in flight."""
        return 2 if self.write_cycles is None else self.write_cycles

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        p = "SWARMGATE_"
        cidrs = tuple(c.strip() for c in e.get(p + "ALLOW_CIDRS", "").split(",") if c.strip())
        kw: dict[str, object] = {
            "database_url": e.get(p + "DATABASE_URL") or cls.database_url,
            "host": e.get(p + "HOST") or cls.host,
            "port": int(_f(e, p + "PORT", cls.port)),
            "public_url": e.get(p + "PUBLIC_URL", ""),
            "agents_file": e.get(p + "AGENTS_FILE") or None,
            "allow_cidrs": cidrs,
            "lease_s": _f(e, p + "LEASE_S", cls.lease_s),
            "poll_interval_s": _f(e, p + "POLL_S", cls.poll_interval_s),
            "sync_wait_s": _f(e, p + "SYNC_WAIT_S", cls.sync_wait_s),
            "callback_ttl_s": _f(e, p + "CALLBACK_TTL_S", cls.callback_ttl_s),
            "callback_timeout_s": _f(e, p + "CALLBACK_TIMEOUT_S", cls.callback_timeout_s),
            "callback_retry_initial_s": _f(
                e, p + "CALLBACK_RETRY_INITIAL_S", cls.callback_retry_initial_s
            ),
            "callback_retry_max_s": _f(e, p + "CALLBACK_RETRY_MAX_S", cls.callback_retry_max_s),
            "idempotency_ttl_s": _f(e, p + "IDEMPOTENCY_TTL_S", cls.idempotency_ttl_s),
            "max_inflight": int(_f(e, p + "MAX_INFLIGHT", cls.max_inflight)),
            "auth_mode": e.get(p + "AUTH_MODE") or cls.auth_mode,
            "jwt_secret": e.get(p + "JWT_SECRET") or None,
            "jwks_url": e.get(p + "JWKS_URL") or None,
            "jwt_issuer": e.get(p + "JWT_ISSUER") or cls.jwt_issuer,
            "jwt_audience": e.get(p + "JWT_AUDIENCE") or cls.jwt_audience,
            "secret": e.get(p + "SECRET") or None,
            "max_body_bytes": int(_f(e, p + "MAX_BODY_BYTES", cls.max_body_bytes)),
            "max_response_bytes": int(_f(e, p + "MAX_RESPONSE_BYTES", cls.max_response_bytes)),
            "max_pending_starts": int(_f(e, p + "MAX_PENDING_STARTS", cls.max_pending_starts)),
            "breaker_threshold": int(_f(e, p + "BREAKER_THRESHOLD", cls.breaker_threshold)),
            "breaker_cooldown_s": _f(e, p + "BREAKER_COOLDOWN_S", cls.breaker_cooldown_s),
            "shutdown_grace_s": _f(e, p + "SHUTDOWN_GRACE_S", cls.shutdown_grace_s),
            "task_poll_s": _f(e, p + "TASK_POLL_S", cls.task_poll_s),
            "cancel_grace_s": _f(e, p + "CANCEL_GRACE_S", cls.cancel_grace_s),
            "endpoint_down_s": _f(e, p + "ENDPOINT_DOWN_S", cls.endpoint_down_s),
            "pull_recheck_s": _f(e, p + "PULL_RECHECK_S", cls.pull_recheck_s),
            "worker_live_s": _f(e, p + "WORKER_LIVE_S", cls.worker_live_s),
            "event_loop": e.get(p + "EVENT_LOOP") or cls.event_loop,
            "log_format": e.get(p + "LOG_FORMAT") or cls.log_format,
            "log_level": e.get(p + "LOG_LEVEL") or cls.log_level,
            "sqlite_synchronous": e.get(p + "SQLITE_SYNCHRONOUS") or cls.sqlite_synchronous,
            "callback_ack_commit": (
                e.get(p + "CALLBACK_ACK_COMMIT") or cls.callback_ack_commit
            ).lower(),
            "callback_ack_linger_s": _f(e, p + "CALLBACK_ACK_LINGER_S", cls.callback_ack_linger_s),
            "write_linger_s": _linger(e, p + "WRITE_LINGER_S"),
            "write_cycles": _cycles(e, p + "WRITE_CYCLES"),
            "db_pool_size": int(_f(e, p + "DB_POOL_SIZE", cls.db_pool_size)),
            "workers": int(_f(e, p + "WORKERS", cls.workers)),
            "reuse_port": _flag(e, p + "REUSE_PORT", False),
            "public_cards": _flag(e, p + "PUBLIC_CARDS", cls.public_cards),
            "access_log": _flag(e, p + "ACCESS_LOG", False),
            "hot_path": _flag(e, p + "HOT_PATH", cls.hot_path),
            "gc_threshold": int(_f(e, p + "GC_THRESHOLD", cls.gc_threshold)),
            "mcp_wait_s": _f(e, p + "MCP_WAIT_S", cls.mcp_wait_s),
            "startup_db_wait_s": _f(e, p + "STARTUP_DB_WAIT_S", cls.startup_db_wait_s),
            "body_timeout_s": _f(e, p + "BODY_TIMEOUT_S", cls.body_timeout_s),
            "keepalive_requests": int(_f(e, p + "KEEPALIVE_REQUESTS", cls.keepalive_requests)),
            "otel_endpoint": (
                e.get(p + "OTEL_EXPORTER_OTLP_ENDPOINT")
                or e.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or None
            ),
            "otel_service_name": e.get("OTEL_SERVICE_NAME") or cls.otel_service_name,
        }
        if e.get(p + "REPLICA_ID"):
            kw["replica_id"] = e[p + "REPLICA_ID"]
        if kw["auth_mode"] not in ("hs256", "jwks", "none"):
            raise ConfigError("SWARMGATE_AUTH_MODE must be hs256, jwks or none")
        if kw["auth_mode"] == "jwks" and not kw["jwks_url"]:
            raise ConfigError("SWARMGATE_AUTH_MODE=jwks needs SWARMGATE_JWKS_URL")
        if int(str(kw["gc_threshold"])) < 0:
            raise ConfigError(f"SWARMGATE_GC_THRESHOLD must be 0 or more, got {kw['gc_threshold']}")
        if not 0 <= float(str(kw["callback_ack_linger_s"])) <= 1:
            raise ConfigError(
                "SWARMGATE_CALLBACK_ACK_LINGER_S must be 0 to 1 (seconds), "
                f"got {kw['callback_ack_linger_s']}"
            )
        if int(str(kw["keepalive_requests"])) < 0:
            raise ConfigError(
                f"SWARMGATE_KEEPALIVE_REQUESTS must be 0 or more, got {kw['keepalive_requests']}"
            )
        if not 0 <= int(str(kw["port"])) <= 65535:
            raise ConfigError(f"SWARMGATE_PORT must be 0-65535, got {kw['port']}")
        _check_cidrs(cidrs)
        _one_of(p + "LOG_FORMAT", str(kw["log_format"]), ("json", "text"))
        _one_of(p + "LOG_LEVEL", str(kw["log_level"]), ("debug", "info", "warning", "error"))
        _one_of(p + "EVENT_LOOP", str(kw["event_loop"]), ("uvloop", "asyncio"))
        _one_of(p + "CALLBACK_ACK_COMMIT", str(kw["callback_ack_commit"]), ("async", "durable"))
        _one_of(
            p + "SQLITE_SYNCHRONOUS",
            str(kw["sqlite_synchronous"]),
            ("off", "normal", "full", "extra"),
        )
        return cls(**kw)  # type: ignore[arg-type]
