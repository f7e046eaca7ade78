"""Per-agent circuit breaker and concurrency limits (per replica)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass
class _Circuit:
    failures: int = 0
    open_until: datetime | None = None
    trial_in_flight: bool = False


@dataclass(frozen=True)
class CircuitSnapshot:
    """How an agent's circuit stands on this replica (for the console)."""

    state: str  # closed | open | half-open
    failures: int
    open_until: datetime | None


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` consecutive retryable failures of an agent; after ``cooldown_s``
    lets one trial dispatch through (half-open); a success closes it, a failure reopens it."""

    threshold: int = 5
    cooldown_s: float = 60.0
    _circuits: dict[str, _Circuit] = field(default_factory=dict)

    def allow(self, agent: str, now: datetime) -> datetime | None:
        """None if a dispatch may go ahead; otherwise when to try again."""
        c = self._circuits.get(agent)
        if c is None or c.open_until is None:
            return None
        if now < c.open_until:
            return c.open_until
        if c.trial_in_flight:  # half-open: one trial at a time
            return now + timedelta(seconds=min(1.0, self.cooldown_s))
        c.trial_in_flight = True
        return None

    def success(self, agent: str) -> None:
        self._circuits.pop(agent, None)

    def failure(self, agent: str, now: datetime) -> bool:
        """Record a retryable failure; True if the circuit is (now) open."""
        c = self._circuits.setdefault(agent, _Circuit())
        c.failures += 1
        c.trial_in_flight = False
        if c.open_until is not None or c.failures >= self.threshold:
            c.open_until = now + timedelta(seconds=self.cooldown_s)
            return True
        return False

    def snapshot(self, agent: str, now: datetime) -> CircuitSnapshot:
        c = self._circuits.get(agent)
        if c is None:
            return CircuitSnapshot("closed", 0, None)
        if c.open_until is None:
            return CircuitSnapshot("closed", c.failures, None)
        state = "open" if now < c.open_until else "half-open"
        return CircuitSnapshot(state, c.failures, c.open_until)

    def is_open(self, agent: str) -> bool:
        c = self._circuits.get(agent)
        return c is not None and c.open_until is not None


@dataclass
class Limits:
    """In-process concurrency limit per agent operation (``OperationSpec.concurrency``)."""

    _sems: dict[tuple[str, str], tuple[int, asyncio.Semaphore]] = field(default_factory=dict)

    def semaphore(self, agent: str, operation: str, limit: int) -> asyncio.Semaphore:
        key = (agent, operation)
        found = self._sems.get(key)
        if found is None or found[0] != limit:
            found = (limit, asyncio.Semaphore(limit))
            self._sems[key] = found
        return found[1]
