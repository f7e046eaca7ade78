"""Per-caller Standard Webhooks signing of callbacks, with secret rotation."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import timedelta

from gateway.domain.clock import Clock
from gateway.domain.model import CallerSecrets
from gateway.domain.ports import Store
from gateway.security import webhooks

SECRETS_CACHED = 4096  # callers whose secrets are remembered (LRU, each for cache_ttl_s)


class CallbackSigner:
    """Signs each callback with the caller's current secret, and with the previous one too
    while a rotation's grace period lasts (receivers accept either)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        cache_ttl_s: float = 5.0,
        max_cached: int = SECRETS_CACHED,
    ) -> None:
        self.store = store
        self.clock = clock
        self.cache_ttl_s = cache_ttl_s
        # Bounded: one entry per caller that got a callback, and callers come and go (a
        # gateway with many short-lived principals would otherwise keep one per caller ever).
        self.max_cached = max(1, max_cached)
        self._cache: OrderedDict[str, tuple[float, CallerSecrets]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[CallerSecrets]] = {}

    @property
    def cached(self) -> int:
        """Callers whose secrets are in the cache now."""
        return len(self._cache)

    def _remember(self, caller: str, secrets: CallerSecrets) -> None:
        self._cache[caller] = (time.monotonic(), secrets)
        self._cache.move_to_end(caller)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    async def secrets(self, caller: str) -> CallerSecrets:
        hit = self._cache.get(caller)
        if hit is not None and time.monotonic() - hit[0] < self.cache_ttl_s:
            self._cache.move_to_end(caller)
            return hit[1]
        pending = self._loading.get(caller)
        if pending is not None:  # one store read per caller, however many callbacks wait
            return await asyncio.shield(pending)
        fut: asyncio.Future[CallerSecrets] = asyncio.get_running_loop().create_future()
        self._loading[caller] = fut
        try:
            found = await self.store.caller_secrets(
                caller, self.clock.now(), webhooks.generate_secret()
            )
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            self._loading.pop(caller, None)
        self._remember(caller, found)
        fut.set_result(found)
        return found

    async def headers(self, caller: str, msg_id: str, body: bytes, now: int) -> dict[str, str]:
        secrets = await self.secrets(caller)
        return webhooks.signed_headers(secrets.active(self.clock.now()), msg_id, body, now)

    async def rotate(self, caller: str, grace_s: float) -> CallerSecrets:
        now = self.clock.now()
        rotated = await self.store.rotate_caller_secret(
            caller, webhooks.generate_secret(), now, now + timedelta(seconds=grace_s)
        )
        self._remember(caller, rotated)
        return rotated
