"""Subprocesses of a benchmark run: the gateway under test and the echo agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on ``port`` (any address), from /proc/net (Linux; 0
    elsewhere): one per gateway worker."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if (
                len(fields) > 3
                and fields[3] == "0A"
                and int(fields[1].rsplit(":", 1)[1], 16) == port
            ):
                count += 1
    return count


class Child:
    """A child process whose standard input is a lifeline: closing it makes the child stop."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(
        self, url: str, timeout_s: float, *, port: int | None = None, listeners: int = 1
    ) -> None:
        """Until ``url`` answers 200 and, with ``port``, ``listeners`` sockets listen on it.

        Several gateway workers each listen on the port (SO_REUSEPORT) and the first one
        ready answers the probe: a load that opened its keep-alive connections then would
        put every one of them on that worker, and "two workers" would measure one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ready = False
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited: {self.tail()}")
                if not ready:
                    try:
                        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                            ready = r.status == 200
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                if ready and (port is None or listening_sockets(port) >= listeners):
                    return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} did not become ready: {self.tail()}")

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode


def agent_process(port: int, log: Path, max_seconds: float, hold_s: float = 2.0) -> Child:
    argv = [
        sys.executable,
        "-m",
        "bench.agent",
        "--port",
        str(port),
        "--max-seconds",
        str(max_seconds),
        "--hold-s",
        str(hold_s),
    ]
    return Child("echo agent", argv, {**os.environ, "PYTHONUNBUFFERED": "1"}, log)


def write_agents_file(path: Path, agent_url: str) -> None:
    spec = {
        "name": "bench",
        "endpoint": agent_url,
        "description": "benchmark echo agent",
        "operations": [
            {
                "name": "echo",
                "timeout_s": 3600,
                "attempt_timeout_s": 30,
                "retry": {"initial_s": 0.2, "max_s": 2.0, "jitter_s": 0.1},
            },
            # answered after a while (the side load's long-polls and SSE clients wait on it)
            {"name": "hold", "timeout_s": 600, "attempt_timeout_s": 60},
        ],
    }
    path.write_text(json.dumps([spec]))


def add_gateway_env_argument(p: argparse.ArgumentParser) -> None:
    """``--gateway-env NAME=VALUE`` (repeatable), parsed by :func:`parse_gateway_env`."""
    p.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SWARMGATE_* setting for the gateway (repeatable), e.g. to compare two settings",
    )


def parse_gateway_env(pairs: list[str]) -> dict[str, str]:
    """``--gateway-env SWARMGATE_NAME=VALUE`` arguments as a mapping (ValueError otherwise)."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("SWARMGATE_"):
            raise ValueError(f"--gateway-env takes SWARMGATE_NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def gateway_process(
    *,
    db_url: str,
    port: int,
    agents_file: Path,
    log: Path,
    max_seconds: float,
    sqlite_synchronous: str | None,
    extra_env: dict[str, str] | None = None,
    root: Path | None = None,
) -> Child:
    """The gateway under test; ``root`` runs another checkout's gateway (its ``.venv``), e.g.
    the base commit of a before/after comparison, under the same harness."""
    env = {
        **os.environ,
        "SWARMGATE_DATABASE_URL": db_url,
        "SWARMGATE_HOST": "127.0.0.1",
        "SWARMGATE_PORT": str(port),
        "SWARMGATE_AUTH_MODE": "none",
        "SWARMGATE_ALLOW_CIDRS": "127.0.0.0/8",
        "SWARMGATE_AGENTS_FILE": str(agents_file),
        # the start answers right after its commit (201); the dispatch runs in the background
        "SWARMGATE_SYNC_WAIT_S": "0",
        "PYTHONUNBUFFERED": "1",
    }
    if sqlite_synchronous:
        env["SWARMGATE_SQLITE_SYNCHRONOUS"] = sqlite_synchronous
    env.update(extra_env or {})
    python = sys.executable if root is None else str(root / ".venv" / "bin" / "python")
    argv = [python, "-m", "bench.gwproc", "--max-seconds", str(max_seconds)]
    return Child("gateway", argv, env, log, cwd=root or ROOT)
