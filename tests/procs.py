"""Real gateway subprocesses for crash and multi-replica tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


class GatewayProcess:
    def __init__(self, db_url: str, port: int, *, log: Path, **env: str) -> None:
        self.db_url = db_url
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.env = {
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
        }
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log.read_text()[-3000:]}")
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"gateway did not become ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with http.get(url, **kw) as r:
        r.raise_for_status()
        return await r.json()
