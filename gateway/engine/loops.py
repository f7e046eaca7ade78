"""Background loops: starting and stopping them, and keeping one failure from ending one.

This room owns ``run`` (the work and callback claim loops, the timeout sweep, lease
extension, housekeeping and the closures listener, each as a named task), ``stop`` (graceful:
stop claiming, let in-flight work finish within the grace, cancel the rest, release leases),
``wake``, and the guard that counts and logs a loop's errors and goes round again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from gateway.domain.errors import StoreError, StoreFull
from gateway.engine.cancel import Cancels
from gateway.engine.core import EngineCore
from gateway.engine.dispatch import Dispatcher
from gateway.engine.heartbeats import Heartbeats
from gateway.engine.outbox import Outbox
from gateway.engine.waiters import Waiters

log = logging.getLogger("swarmgate.engine")


class Loops:
    def __init__(
        self,
        core: EngineCore,
        dispatcher: Dispatcher,
        outbox: Outbox,
        cancels: Cancels,
        waiters: Waiters,
        heartbeats: Heartbeats,
    ) -> None:
        self._core = core
        self._dispatcher = dispatcher
        self._outbox = outbox
        self._cancels = cancels
        self._waiters = waiters
        self._heartbeats = heartbeats
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False

    async def run(self) -> None:
        """Start the background loops (returns at once)."""
        core = self._core
        self._stopping = False
        self._loops = [
            asyncio.create_task(
                self._claim_loop("work", core.wake_work, self._dispatcher.claim_and_run),
                name="sg-work",
            ),
            asyncio.create_task(
                self._claim_loop("callbacks", core.wake_callbacks, self._outbox.claim_and_deliver),
                name="sg-callbacks",
            ),
            asyncio.create_task(self._timeout_loop(), name="sg-timeouts"),
            asyncio.create_task(self._lease_loop(), name="sg-leases"),
            asyncio.create_task(self._housekeeping_loop(), name="sg-housekeeping"),
            asyncio.create_task(self._closures_loop(), name="sg-closures"),
        ]

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work, let in-flight work finish for ``grace_s``, then cancel what is
        left and release its leases so another replica takes it over at once."""
        core = self._core
        grace = core.config.shutdown_grace_s if grace_s is None else grace_s
        self._stopping = True
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        pending = list(core.inflight.values()) + list(core.cb_inflight.values())
        if pending:
            _done, not_done = await asyncio.wait(pending, timeout=grace)
            for t in not_done:
                t.cancel()
            await asyncio.gather(*not_done, return_exceptions=True)
        try:
            released = await core.store.release_leases(core.config.owner)
            if released:
                log.info("released %d leases on shutdown", released)
        except StoreError as exc:
            log.warning("could not release leases on shutdown (they will expire): %s", exc)

    def wake(self) -> None:
        self._core.wake_work.set()
        self._core.wake_callbacks.set()

    async def _sleep_or_wake(self, ev: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), seconds)
        ev.clear()

    async def _guarded(self, name: str, coro: Any) -> None:
        core = self._core
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            core.metrics.loop_errors.labels(name, "store").inc()
            if not isinstance(exc, StoreFull):  # a full disk is logged once, by the store
                log.warning("%s: store error: %s", name, exc)
            await asyncio.sleep(core.config.poll_interval_s)
        except Exception:
            core.metrics.loop_errors.labels(name, "unexpected").inc()
            log.exception("%s failed", name)
            await asyncio.sleep(core.config.poll_interval_s)

    async def _claim_loop(
        self, name: str, wake: asyncio.Event, step: Callable[[], Awaitable[int]]
    ) -> None:
        while not self._stopping:
            await self._guarded(name, step())
            await self._sleep_or_wake(wake, self._core.config.poll_interval_s)

    async def _lease_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(max(0.2, self._core.config.lease_s / 3))
            await self._guarded("leases", self._extend_leases())

    async def _extend_leases(self) -> None:
        core = self._core
        until = core.now() + timedelta(seconds=core.config.lease_s)
        await core.store.extend_leases(core.config.owner, list(core.inflight), until)
        deliveries = [k for k in core.cb_inflight if not k.startswith("recheck-")]
        await core.store.extend_callback_leases(core.config.owner, deliveries, until)

    async def _timeout_loop(self) -> None:
        while not self._stopping:
            await self._guarded("timeouts", self._cancels.expire_timeouts())
            await self._guarded("heartbeats", self._heartbeats.expire())
            await asyncio.sleep(self._core.config.poll_interval_s)

    async def _closures_loop(self) -> None:
        """Wake long-polls here when another replica closes their operation (a hint: they
        re-read the store every poll interval anyway); resubscribe when the listener drops."""
        while not self._stopping:
            await self._guarded("closures", self._waiters.listen())
            await asyncio.sleep(self._core.config.poll_interval_s)

    async def _housekeeping_loop(self) -> None:
        while not self._stopping:
            core = self._core
            await self._guarded("idempotency", core.store.purge_idempotency(core.now()))
            await asyncio.sleep(60.0)
