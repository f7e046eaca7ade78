"""Test-only fault points for crash tests of a real gateway process.

``SWARMGATE_TEST_FAULT=<name>`` in a gateway's environment makes it SIGKILL itself the first
time it reaches the point ``name`` (a crash at an exact place, e.g. between a start's commit
and its answer). Unset (always, outside tests) every point is a no-op.
"""

from __future__ import annotations

import os
import signal

AFTER_START_COMMIT = "after-start-commit"

_ARMED = os.environ.get("SWARMGATE_TEST_FAULT", "")


def point(name: str) -> None:
    """Crash here (SIGKILL: no cleanup, no flush) if the environment armed ``name``."""
    if _ARMED and _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
