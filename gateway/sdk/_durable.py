"""What makes an AgentApp attempt durable: heartbeats, the step journal, the stored answer.

One :class:`Attempt` per dispatch that reached this agent. It reads what the dispatch carried
(``gateway.domain.dispatch`` names the headers): the heartbeat and steps URLs, the attempt
number, the heartbeat timeout, and the journal of earlier attempts (in the
``Swarmgate-Journal`` header, or fetched from the steps URL when it was too big). While an
async handler runs, it heartbeats every ``timeout / 3`` seconds (sooner when the handler adds
details) and stops the handler when the answer says the operation was canceled, closed or
taken over by a later attempt. ``step`` records each step's result in the gateway before the
handler goes on, and the final answer is the journal's ``$result`` entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp

from gateway.domain.dispatch import (
    HEADER_ATTEMPT,
    HEADER_HEARTBEAT_TIMEOUT,
    HEADER_HEARTBEAT_URL,
    HEADER_JOURNAL,
    HEADER_JOURNAL_OMITTED,
    HEADER_STEPS_URL,
    RESULT_STEP,
)

ANSWER_PREFIX = "$input:"  # the journal entry of the caller's answer to question <name>

log = logging.getLogger("swarmgate.agent")

K = TypeVar("K")
V = TypeVar("V")
_TRANSIENT = (aiohttp.ClientError, TimeoutError, OSError)
_RECORD_TRIES = 40  # ~30 s of retries for a step record before the handler gives up


class GatewayRefused(Exception):
    """The gateway refused a journal write for good (the operation closed or moved on)."""


class InputRequested(Exception):
    """The handler asked its caller for input: this attempt ends; the answer re-runs it."""

    def __init__(self, name: str, prompt: str) -> None:
        super().__init__(f"waiting for input {name!r}: {prompt}")
        self.name = name


class Stopped(Exception):
    """Why a handler was stopped: ``canceled`` (the caller asked) or ``closed``/``stale``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LRU(Generic[K, V]):
    """A bounded map: the least recently used entry goes first once it is full.

    An entry for which ``keep(value)`` is true (a job still running) stays.
    """

    def __init__(self, size: int, keep: Callable[[V], bool] = lambda _v: False) -> None:
        self.size = size
        self._keep = keep
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.size:
            for k in list(self._data):
                if len(self._data) <= self.size:
                    break
                if not self._keep(self._data[k]):
                    del self._data[k]

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def values(self) -> list[V]:
        return list(self._data.values())

    def __len__(self) -> int:
        return len(self._data)


class Attempt:
    """One dispatch's link to the gateway: heartbeats, journal reads and step records."""

    def __init__(
        self, headers: Mapping[str, str], session: Callable[[], aiohttp.ClientSession]
    ) -> None:
        auth = headers.get("Nexus-Callback-Authorization", "")
        self._auth = {"Authorization": auth} if auth else {}
        self._session = session
        self.attempt = _int(headers.get(HEADER_ATTEMPT), 1)
        self.heartbeat_url = headers.get(HEADER_HEARTBEAT_URL) or None
        self.steps_url = headers.get(HEADER_STEPS_URL) or None
        timeout = _float(headers.get(HEADER_HEARTBEAT_TIMEOUT))
        self.heartbeat_timeout_s = timeout if timeout and timeout > 0 else None
        self.steps: dict[str, Any] = {}
        self.previous_details: Any = None
        self._fetch_journal = bool(headers.get(HEADER_JOURNAL_OMITTED))
        raw = headers.get(HEADER_JOURNAL)
        if raw:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self._read_journal(json.loads(raw))
        self._details: Any = None
        self._details_pending = False
        self._details_seq = 0  # counts add_details: a heartbeat in flight must not clear a newer
        self._wake = asyncio.Event()
        self.handler: asyncio.Task[Any] | None = None
        self.stopped: str | None = None
        self.heartbeats_sent = 0
        self._looping = False
        self._one_offs: set[asyncio.Future[Any]] = set()
        self._asks = 0  # questions this run of the handler asked, in order (their names)

    def _read_journal(self, data: dict[str, Any]) -> None:
        self.steps = {s["name"]: s.get("result") for s in data.get("steps") or []}
        self.previous_details = data.get("details")

    def adopt(self, newer: Attempt) -> None:
        """A later dispatch of the same key reached this running job: heartbeat as it."""
        self.attempt = newer.attempt
        self._auth = newer._auth or self._auth
        self.heartbeat_url = newer.heartbeat_url or self.heartbeat_url
        self._wake.set()

    # -- the journal ------------------------------------------------------------------------

    async def load(self) -> None:
        """Fetch the journal when the dispatch could not carry it in a header."""
        if not (self._fetch_journal and self.steps_url):
            return
        for delay in _delays():
            try:
                async with self._session().get(
                    self.steps_url, headers=self._auth, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    if resp.status == 200:
                        self._read_journal(await resp.json())
                        self._fetch_journal = False
                        return
                    if resp.status < 500 and resp.status != 429:
                        raise GatewayRefused(f"journal read refused: HTTP {resp.status}")
            except _TRANSIENT:
                pass
            await asyncio.sleep(delay)
        raise GatewayRefused("the gateway did not answer the journal read")

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """The recorded result of step ``name``, or ``fn(*args)``'s, recorded first."""
        if name in self.steps:
            return self.steps[name]
        value = fn(*args)
        if inspect.isawaitable(value):
            value = await value
        recorded = await self.record(name, value)
        self.steps[name] = recorded
        return recorded

    async def record(self, name: str, value: Any) -> Any:
        """Record ``value`` as step ``name``; returns what the journal holds.

        Retries while the gateway is unreachable; the first write of a name wins.
        """
        body = json.dumps({"result": value, "attempt": self.attempt}).encode()
        if not self.steps_url:
            return value  # no journal (an older gateway, or a direct call)
        url = f"{self.steps_url}/{_quote(name)}"
        headers = {**self._auth, "Content-Type": "application/json"}
        for delay in _delays():
            try:
                async with self._session().put(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    if resp.status in (200, 201):
                        return (await resp.json())["result"]
                    if resp.status < 500 and resp.status != 429:
                        raise GatewayRefused(f"step {name!r} refused: HTTP {resp.status}")
            except _TRANSIENT:
                pass
            await asyncio.sleep(delay)
        raise GatewayRefused(f"the gateway did not record step {name!r}")

    @property
    def input_request_url(self) -> str | None:
        """Where the agent asks its caller (``.../api/operations/{id}/input-request``)."""
        base = self.steps_url or self.heartbeat_url
        if not base:
            return None
        return base.rsplit("/", 1)[0] + "/input-request"

    async def ask(self, prompt: str, schema: dict[str, Any] | None, name: str | None) -> Any:
        """The caller's answer to this question, from the journal, if it was given.

        Otherwise the question is recorded in the gateway and ``InputRequested`` ends the
        attempt.
        """
        self._asks += 1
        name = name or str(self._asks)
        answer = self.steps.get(f"{ANSWER_PREFIX}{name}")
        if isinstance(answer, dict) and "value" in answer:
            return answer["value"]
        url = self.input_request_url
        if url is None:
            raise GatewayRefused("ctx.ask needs a dispatch from a gateway (no journal URL)")
        body = json.dumps(
            {"name": name, "prompt": prompt, "schema": schema, "attempt": self.attempt}
        ).encode()
        headers = {**self._auth, "Content-Type": "application/json"}
        for delay in _delays():
            try:
                async with self._session().post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    if resp.status == 200:  # answered already (e.g. while this ran)
                        return (await resp.json())["value"]
                    if resp.status == 202:
                        raise InputRequested(name, prompt)
                    if resp.status < 500 and resp.status != 429:
                        text = (await resp.text())[:200]
                        raise GatewayRefused(f"input request refused: HTTP {resp.status} {text}")
            except _TRANSIENT:
                pass
            await asyncio.sleep(delay)
        raise GatewayRefused("the gateway did not record the input request")

    def stored_answer(self) -> dict[str, Any] | None:
        """The final answer an earlier attempt recorded (``$result``), if any."""
        answer = self.steps.get(RESULT_STEP)
        return answer if isinstance(answer, dict) and "status" in answer else None

    # -- heartbeats -------------------------------------------------------------------------

    def add_details(self, details: Any) -> None:
        """Send ``details`` with a heartbeat now (the loop's, or a one-off one)."""
        self._details, self._details_pending = details, True
        self._details_seq += 1
        self._wake.set()
        if not self._looping and self.heartbeat_url:  # a sync handler: no loop runs
            task = asyncio.ensure_future(self._beat())
            self._one_offs.add(task)
            task.add_done_callback(self._one_offs.discard)

    async def heartbeat_loop(self) -> None:
        """Heartbeat until cancelled; stop the handler when the gateway says so."""
        if not self.heartbeat_url:
            return
        self._looping = True
        interval = self.heartbeat_timeout_s / 3 if self.heartbeat_timeout_s else None
        while True:
            if interval is None and not self._details_pending:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            reason = await self._beat()
            if reason is not None:
                self.stop(reason)
                return

    async def _beat(self) -> str | None:
        body: dict[str, Any] = {"attempt": self.attempt}
        sending = self._details_pending
        if sending:
            body["details"] = self._details
        seq = self._details_seq
        assert self.heartbeat_url is not None
        try:
            async with self._session().post(
                self.heartbeat_url,
                data=json.dumps(body).encode(),
                headers={**self._auth, "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                self.heartbeats_sent += 1
                if resp.status == 200:
                    if sending and self._details_seq == seq:  # none newer came meanwhile
                        self._details_pending = False
                    answer = await resp.json()
                    return "canceled" if answer.get("cancelRequested") else None
                if resp.status in (404, 409):
                    return "closed"
        except _TRANSIENT as exc:  # the gateway is unreachable: try again next round
            log.debug("heartbeat failed: %s", exc)
        return None

    def stop(self, reason: str) -> None:
        """Cancel the running handler (the gateway canceled, closed or moved on)."""
        self.stopped = reason
        if self.handler is not None and not self.handler.done():
            self.handler.cancel()


async def run_handler(attempt: Attempt | None, coro: Awaitable[Any]) -> Any:
    """Run the handler as its own task, so a heartbeat answer can stop it (``Stopped``)."""
    if attempt is None:
        return await coro
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    attempt.handler = task
    beats = asyncio.create_task(attempt.heartbeat_loop())
    try:
        return await task
    except asyncio.CancelledError:
        if attempt.stopped is None or not task.cancelled():
            raise  # cancelled from outside (a cancel request, shutdown)
        raise Stopped(attempt.stopped) from None
    finally:
        beats.cancel()
        with contextlib.suppress(BaseException):
            await beats


def _delays() -> list[float]:
    return [min(0.05 * 2**i, 1.0) for i in range(_RECORD_TRIES)]


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None
