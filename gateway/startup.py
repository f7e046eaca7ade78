"""Starting against a database that is not there yet (a PostgreSQL restart, a replica started
before its database): migrations are retried with backoff for ``SWARMGATE_STARTUP_DB_WAIT_S``,
each retry logged, instead of the process exiting on the first ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from gateway.domain.errors import StoreUnavailable
from gateway.domain.ports import Store

log = logging.getLogger("swarmgate.startup")

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 5.0


async def migrate_when_reachable(store: Store, wait_s: float) -> None:
    """``store.migrate()``, retried while the database is unavailable, for at most ``wait_s``
    seconds (then the last ``StoreUnavailable`` propagates); other errors at once."""
    deadline = time.monotonic() + max(0.0, wait_s)
    delay = FIRST_DELAY_S
    attempt = 1
    while True:
        try:
            await store.migrate()
        except StoreUnavailable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                log.error(
                    "database still unavailable after %gs (attempt %d): %s; giving up",
                    wait_s,
                    attempt,
                    exc,
                )
                raise
            pause = min(delay * random.uniform(0.8, 1.2), left)
            log.warning(
                "database unavailable at startup (attempt %d): %s; retrying in %.1fs "
                "(%.0fs left of SWARMGATE_STARTUP_DB_WAIT_S)",
                attempt,
                exc,
                pause,
                left,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_DELAY_S)
            attempt += 1
            continue
        if attempt > 1:
            log.warning("database reachable after %d attempts; migrations applied", attempt)
        return
