"""Several gateway processes on one port (``SWARMGATE_WORKERS=N``), one per core.

One Python process runs on one core; past that, a busy gateway is CPU-bound. The supervisor
applies the migrations (so a bad database fails once, clearly), then starts N
``swarmgate serve`` children that listen on the same address with SO_REUSEPORT (the kernel
spreads connections over them). Each child is a full replica with its own lease owner id,
exactly as if several gateways shared the database, which the engine already supports
(leases, ``FOR UPDATE SKIP LOCKED``): hence PostgreSQL only.

SIGTERM/SIGINT are passed on to the children (each stops taking work and releases its leases);
a child that dies is started again after a pause; the children get SIGTERM if the supervisor
dies (Linux parent-death signal).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.domain.errors import ConfigError

log = logging.getLogger("swarmgate.workers")

RESTART_PAUSE_S = 1.0
_PR_SET_PDEATHSIG = 1


def check(settings: Settings) -> None:
    if settings.workers < 1:
        raise ConfigError("SWARMGATE_WORKERS must be at least 1")
    if settings.workers > 1 and not settings.database_url.startswith("postgres"):
        raise ConfigError(
            "SWARMGATE_WORKERS > 1 needs PostgreSQL (SWARMGATE_DATABASE_URL=postgresql://...): "
            "the worker processes share the database as replicas"
        )


def child_env(settings: Settings, index: int) -> dict[str, str]:
    """A worker's environment: one process of the N, with the settings whose "auto" depends
    on N resolved here (a worker sees ``SWARMGATE_WORKERS=1``)."""
    env = dict(os.environ)
    env.update(
        SWARMGATE_WORKERS="1",
        SWARMGATE_REUSE_PORT="1",
        SWARMGATE_HOST=settings.host,
        SWARMGATE_PORT=str(settings.port),
        SWARMGATE_REPLICA_ID=f"{settings.replica_id}-w{index}",
        SWARMGATE_WRITE_CYCLES=str(settings.write_cycles_in_flight),
        SWARMGATE_WRITE_LINGER_S=repr(settings.write_linger_in_effect_s),
    )
    if settings.public_url:
        env["SWARMGATE_PUBLIC_URL"] = settings.public_url
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    settings: Settings
    migrate: Callable[[Settings], None]
    stopping: bool = False
    children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve"],
            env=child_env(self.settings, index),
            preexec_fn=preexec,
        )

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def run(self) -> int:
        self.migrate(self.settings)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for i in range(self.settings.workers):
            self.children[i] = self._spawn(i)
        print(
            f"swarmgate supervisor {os.getpid()}: {self.settings.workers} workers on "
            f"{self.settings.base_url}",
            flush=True,
        )
        while self.children:
            for i, proc in list(self.children.items()):
                code = proc.poll()
                if code is None:
                    continue
                if self.stopping:
                    del self.children[i]
                    continue
                log.error("worker %d exited with %s; starting it again", i, code)
                time.sleep(RESTART_PAUSE_S)
                if not self.stopping:
                    self.children[i] = self._spawn(i)
            time.sleep(0.1)
        return 0


def migrate_once(settings: Settings) -> None:
    from gateway.startup import migrate_when_reachable
    from gateway.store.sqlstore import SqlStore

    async def run() -> None:
        store = SqlStore(settings.database_url, pool_size=2)
        try:
            await migrate_when_reachable(store, settings.startup_db_wait_s)
        finally:
            await store.close()

    asyncio.run(run())
