"""Real gateway subprocesses for crash and multi-replica tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp

from gateway.testing import GatewayProcess as _GatewayProcess


class GatewayProcess(_GatewayProcess):
    """A gateway child process with test settings (loopback allowed, short leases and polls)."""

    def __init__(self, db_url: str, port: int, *, log: Path, **env: str) -> None:
        super().__init__(
            {
                **os.environ,
                "SWARMGATE_DATABASE_URL": db_url,
                "SWARMGATE_HOST": "127.0.0.1",
                "SWARMGATE_PORT": str(port),
                "SWARMGATE_AUTH_MODE": "none",
                "SWARMGATE_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
                "SWARMGATE_POLL_S": "0.05",
                "SWARMGATE_LEASE_S": "2",
                "SWARMGATE_SYNC_WAIT_S": "0",
                "SWARMGATE_CALLBACK_RETRY_INITIAL_S": "0.1",
                "SWARMGATE_CALLBACK_RETRY_MAX_S": "0.5",
                "SWARMGATE_CALLBACK_TIMEOUT_S": "2",
                "SWARMGATE_SQLITE_SYNCHRONOUS": "NORMAL",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            port,
            log=log,
        )
        self.db_url = db_url


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with http.get(url, **kw) as r:
        r.raise_for_status()
        return await r.json()
