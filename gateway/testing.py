"""What tests and users of swarmgate share.

- :class:`GatewayProcess` runs a real gateway as a child process (``python -m gateway.cli
  serve``): the demo, the crash, replica and chaos tests need a real process, because a SIGKILL
  must hit a process, not a task. :func:`free_port` finds a loopback port for it.
- :class:`ManualClock` is the engine's clock moved by hand: pass it to
  ``gateway.app.build(settings, clock=...)`` and every decision the engine takes from its clock
  (retry and cool-down schedules, timeouts, leases, idempotency retention, signature
  timestamps) waits until the test advances it.
- :func:`eventually` (and :func:`eventually_sync` for code without an event loop) waits for a
  state by polling, instead of sleeping for a guessed time; when time runs out it raises with
  the last value seen or the last exception raised.
- :func:`pg_database_url` names a throw-away PostgreSQL database on the server of an admin URL.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

import aiohttp

from gateway.domain.clock import ManualClock

__all__ = [
    "ROOT",
    "EventuallyTimeout",
    "GatewayProcess",
    "ManualClock",
    "eventually",
    "eventually_sync",
    "free_port",
    "pg_database_url",
]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
"""The directory that holds the ``gateway`` package (the child process's working directory)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EventuallyTimeout(AssertionError):
    """A state awaited with :func:`eventually` was not reached in time.

    ``last`` is the last value the check returned (``None`` if it only raised); the last
    exception the check raised, if any, is chained as ``__cause__``.
    """

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


def _accepts(value: Any, until: Callable[[Any], object] | None) -> bool:
    return bool(until(value) if until is not None else value)


def _timed_out(
    what: str | None, timeout: float, attempts: int, last: Any, error: BaseException | None
) -> EventuallyTimeout:
    name = what or "condition"
    if error is not None:
        detail = f"last error: {type(error).__name__}: {error}"
    else:
        detail = f"last value: {last!r}"
    return EventuallyTimeout(
        f"{name} not reached within {timeout:g}s ({attempts} checks); {detail}", last
    )


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], object] | None = None,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    until: Callable[[T], object] | None = None,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    *,
    until: Callable[[Any], object] | None = None,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> Any:
    """Call ``check`` until it reports the state; return the value that did.

    ``check`` is a plain function or one that returns an awaitable (an ``async def`` or a
    ``lambda`` calling one); its value counts when ``until(value)`` is true, or when the value
    itself is truthy if no ``until`` is given. An exception from ``check`` or ``until`` of a
    type in ``retry_on`` (by default any ``Exception``: an ``assert`` inside ``check``, a
    connection refused while a server starts) counts as "not yet"; any other propagates at
    once. Between checks it sleeps ``interval`` seconds on the running loop, so the
    system under test keeps running; after ``timeout`` seconds it raises
    :class:`EventuallyTimeout` naming ``what`` with the last value or exception.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    last: Any = None
    error: BaseException | None = None
    while True:
        attempts += 1
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            last, error = value, None
            if _accepts(value, until):
                return value
        except retry_on as exc:
            error = exc
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, attempts, last, error) from error
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    *,
    until: Callable[[T], object] | None = None,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str | None = None,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> T:
    """:func:`eventually` for code without a running event loop (it blocks the thread while it
    waits): ``check`` must be a plain function. Same rules for ``until``, exceptions and the
    ``retry_on`` and the :class:`EventuallyTimeout` at the end."""
    deadline = time.monotonic() + timeout
    attempts = 0
    last: Any = None
    error: BaseException | None = None
    while True:
        attempts += 1
        try:
            value = check()
            last, error = value, None
            if _accepts(value, until):
                return value
        except retry_on as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, attempts, last, error) from error
        time.sleep(interval)


class GatewayProcess:
    """``python -m gateway.cli serve`` with the given environment, output appended to ``log``.

    ``start()`` returns once ``/readyz`` answers 200; ``kill()`` is a crash (SIGKILL),
    ``terminate()`` a graceful stop (SIGTERM). ``start()`` again restarts it on the same port.
    """

    def __init__(self, env: Mapping[str, str], port: int, *, log: Path) -> None:
        self.env = dict(env)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 20.0) -> None:
        """Start and wait until ``/readyz`` answers 200 (database reachable, migrated)."""
        with self.log.open("ab") as out:
            proc = self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.tail()}")
                try:
                    async with http.get(self.url + "/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            try:
                await eventually(ready, timeout=timeout_s, interval=0.05, retry_on=())
            except EventuallyTimeout:
                raise TimeoutError(f"gateway did not become ready: {self.tail()}") from None

    def tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the log."""
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (graceful: stop taking work, release leases), SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def pg_database_url(admin: str, name: str) -> str:
    """``admin`` with its database replaced by ``name``; a query (``?host=/var/run/postgresql``
    for the server's Unix socket) is kept."""
    base, sep, query = admin.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + sep + query
