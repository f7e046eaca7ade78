"""A throw-away PostgreSQL cluster for the chaos run (never the shared one on :5432).

initdb into a fresh temp dir, listen on a free loopback port only, fsync on, trust auth.
When the harness runs as root, every PostgreSQL binary runs as the ``postgres`` OS user
(``runuser -u postgres --``) and the temp dir is owned by that user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
import time
from pathlib import Path

import asyncpg

PG_BIN_CANDIDATES = (
    os.environ.get("SWARMGATE_CHAOS_PG_BIN", ""),
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
)


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    for cand in PG_BIN_CANDIDATES:
        if cand and (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    found = shutil.which("pg_ctl")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgError(RuntimeError):
    """The throw-away cluster could not be created, started or restarted."""


class ThrowawayPostgres:
    def __init__(self, bin_dir: Path, *, max_connections: int = 300) -> None:
        self.bin_dir = bin_dir
        self.max_connections = max_connections
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="swarmgate-chaos-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.cmd_log = self.root / "pg_ctl.out"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _argv(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else argv

    async def _run(self, tool: str, *args: str, timeout: float = 90.0) -> None:
        # Output goes to a file, never a pipe: the postmaster must not inherit our pipes.
        with self.cmd_log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(tool, *args),
                cwd=self.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise PgError(f"{tool} {' '.join(args)} timed out; see {self.cmd_log}") from None
        if rc != 0:
            tail = self.cmd_log.read_text(errors="replace")[-2000:]
            raise PgError(f"{tool} {' '.join(args)} exited {rc}:\n{tail}")

    async def create(self) -> None:
        await self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# swarmgate chaos harness\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                f"max_connections = {self.max_connections}\n"
            )

    async def start(self) -> None:
        await self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"
        )
        self.running = True

    async def restart(self, mode: str = "fast") -> float:
        """``pg_ctl restart -m mode``; returns how long the database was unavailable (s)."""
        t0 = time.monotonic()
        await self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )
        await self.wait_ready(30.0)
        return time.monotonic() - t0

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.url(), timeout=2)
                await conn.close()
                return
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise PgError(f"PostgreSQL not ready after {timeout:g}s: {exc}") from exc
                await asyncio.sleep(0.1)

    async def create_database(self, name: str) -> str:
        conn = await asyncpg.connect(self.url(), timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    async def stop(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            try:
                await self._run(
                    "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"
                )
            except PgError:
                pass
        self.running = False

    def remove(self, keep_log_in: Path | None = None) -> None:
        if keep_log_in is not None and self.log.exists():
            with_suppress_copy(self.log, keep_log_in / "postgres.log")
        shutil.rmtree(self.root, ignore_errors=True)


def with_suppress_copy(src: Path, dst: Path) -> None:
    try:
        shutil.copyfile(src, dst)
    except OSError:
        pass
