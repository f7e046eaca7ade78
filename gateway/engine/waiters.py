"""Long-poll waiters: who is waiting for which operation to close, and waking them.

This room owns the in-process map of waiting futures, ``notify`` (called when this replica
closes an operation), ``wait_terminal`` / ``wait_change`` (the long-polls of the HTTP
layer), and the closures listener that wakes them when another replica closes one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from gateway.domain.model import Operation
from gateway.engine.core import EngineCore


class Waiters:
    def __init__(self, core: EngineCore) -> None:
        self._core = core
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    @property
    def watched(self) -> int:
        """Operations somebody here is waiting on."""
        return len(self._waiters)

    def notify(self, op_id: str) -> None:
        for fut in self._waiters.pop(op_id, []):
            if not fut.done():
                fut.set_result(None)

    def notify_many(self, op_ids: Sequence[str]) -> None:
        for op_id in op_ids:
            self.notify(op_id)

    async def listen(self) -> None:
        """Hand the ids other replicas close to :meth:`notify` until the listener drops."""
        await self._core.store.listen_closed(self.notify_many)

    async def wait_terminal(self, op_id: str, wait_s: float) -> Operation | None:
        """Long-poll: the operation once terminal, or as it stands when ``wait_s`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_s)
        while True:
            op = await self._core.store.get_operation(op_id)
            remaining = deadline - loop.time()
            if op is None or op.state.terminal or remaining <= 0:
                return op
            # Completions by other replicas wake this through the closures listener;
            # re-reading now and then covers a lost notification.
            await self.wait_change(
                op_id, min(remaining, max(0.05, self._core.config.poll_interval_s))
            )

    async def wait_change(self, op_id: str, timeout_s: float) -> None:
        """Sleep until this replica closes the operation or ``timeout_s`` passes."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(op_id, []).append(fut)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fut, timeout_s)
        finally:
            waiters = self._waiters.get(op_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(op_id, None)
