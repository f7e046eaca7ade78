"""Gateway replicas as real subprocesses (like tests/procs.py), killed with SIGKILL.

Each replica keeps its port across restarts (agents complete async operations at the URL of
the replica that dispatched them). Every incarnation gets its own lease owner name
(``r<index>.<incarnation>``), so histories show who took over. The children die with the
harness (PR_SET_PDEATHSIG), so a killed harness leaves no gateway behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class Replica:
    def __init__(
        self, index: int, port: int, db_url: str, log_dir: Path, env: Mapping[str, str]
    ) -> None:
        self.index = index
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.db_url = db_url
        self.log = log_dir / f"replica-{index}.log"
        self.base_env = dict(env)
        self.incarnation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.up = False  # ready and not (being) killed
        self.spawns = 0
        self.start_crashes: list[str] = []  # log tails of incarnations that died while starting

    @property
    def owner(self) -> str:
        return f"r{self.index}.{self.incarnation}"

    def _spawn(self) -> None:
        self.incarnation += 1
        self.spawns += 1
        env = {
            **os.environ,
            **self.base_env,
            "SWARMGATE_DATABASE_URL": self.db_url,
            "SWARMGATE_HOST": "127.0.0.1",
            "SWARMGATE_PORT": str(self.port),
            "SWARMGATE_REPLICA_ID": self.owner,
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("ab") as out:
            out.write(f"\n===== chaos: starting {self.owner} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    async def start(self, timeout: float = 45.0) -> None:
        """Spawn and wait for /readyz. A start that dies (e.g. the database is restarting)
        is spawned again until ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._spawn()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while loop.time() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    tail = self.log.read_text(errors="replace")[-1500:]
                    self.start_crashes.append(f"{self.owner} exited {self.proc.returncode}: {tail}")
                    await asyncio.sleep(0.5)
                    self._spawn()
                    continue
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            self.up = True
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        self.kill()
        raise TimeoutError(f"replica {self.index} not ready after {timeout:g}s; see {self.log}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, no flush."""
        self.up = False
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
