"""Sampling profile of the gateway subprocess with py-spy, attached by pid.

py-spy (``pip install py-spy``) records collapsed stacks with ``--format raw --gil``: only the
thread holding the GIL is sampled, so the profile shows where the Python CPU time goes, not
where the process waits (py-spy's idle detection is unreliable in this container). This module
folds the stacks into samples per thread, self time per package/area, and the top functions by
self and by inclusive time.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (substring of the frame's file, area); the first match wins, order matters
AREAS: tuple[tuple[str, str], ...] = (
    ("gateway/store/", "gateway.store"),
    ("gateway/engine/", "gateway.engine"),
    ("gateway/http/", "gateway.http"),
    ("gateway/security/", "gateway.security"),
    ("gateway/", "gateway (other)"),
    ("registry/", "registry"),
    ("adapters/", "adapters"),
    ("sqlalchemy/", "sqlalchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("asyncpg/", "asyncpg"),
    ("alembic/", "alembic"),
    ("aiohttp/", "aiohttp"),
    ("multidict/", "aiohttp"),
    ("yarl/", "aiohttp"),
    ("jsonschema", "jsonschema"),
    ("referencing/", "jsonschema"),
    ("json/", "json"),
    ("asyncio/", "asyncio"),
    ("uuid.py", "stdlib uuid"),
    ("email/", "stdlib email"),
    ("logging/", "logging"),
    ("threading.py", "threading"),
    ("queue.py", "threading"),
)


def py_spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def frame_file(frame: str) -> str:
    if frame.endswith(")") and " (" in frame:
        return frame[frame.rindex(" (") + 2 : -1]
    return ""


def area_of(frame: str) -> str:
    path = frame_file(frame)
    for needle, area in AREAS:
        if needle in path:
            return area
    return "other (stdlib / C)" if path else "other"


def analyze(raw: str, top: int = 25) -> dict[str, Any]:
    """Fold py-spy ``--format raw --threads`` output into a JSON-able summary."""
    total = 0
    threads: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    incl_area: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].split(": ", 1)[-1]
            frames = frames[1:]
        else:
            thread = "?"
        if not frames:
            continue
        total += n
        threads[thread] += n
        leaf = frames[-1]
        self_fn[leaf] += n
        self_area[area_of(leaf)] += n
        for f in set(frames):
            incl_fn[f] += n
        for a in {area_of(f) for f in frames}:
            incl_area[a] += n

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1) if total else 0.0

    return {
        "samples": total,
        "threads_pct": {k: pct(v) for k, v in threads.most_common()},
        "self_by_area_pct": {k: pct(v) for k, v in self_area.most_common()},
        "inclusive_by_area_pct": {k: pct(v) for k, v in incl_area.most_common()},
        "top_self": [{"frame": k, "pct": pct(v)} for k, v in self_fn.most_common(top)],
        "top_inclusive_own_code": [
            {"frame": k, "pct": pct(v)}
            for k, v in incl_fn.most_common()
            if area_of(k).startswith(("gateway.", "registry", "adapters"))
        ][:top],
        "top_inclusive": [
            {"frame": k, "pct": pct(v)} for k, v in incl_fn.most_common(top * 3) if not _boring(k)
        ][:top],
    }


def _boring(frame: str) -> bool:
    """Frames that are on (nearly) every stack and say nothing about where time goes."""
    name = frame.split(" (", 1)[0]
    path = frame_file(frame)
    return (
        name in ("<module>", "_run_module_as_main", "_run_code", "main", "run", "serve")
        and ("runpy" in path or "cli.py" in path or "gwproc.py" in path or "runners" in path)
    ) or path.endswith(("asyncio/base_events.py", "asyncio/events.py", "asyncio/runners.py"))


class PySpy:
    """``py-spy record`` attached to a pid for a fixed time, in the background."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 100) -> None:
        self.pid = pid
        self.seconds = seconds
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> None:
        binary = py_spy_binary()
        if binary is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return
        argv = [
            binary,
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            str(max(1, int(self.seconds))),
            "--rate",
            str(self.rate),
            "--format",
            "raw",
            "--nolineno",
            "--threads",
            "--gil",  # only the thread holding the GIL: Python CPU time, not waits
            "--output",
            str(self.out),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def result(self, top: int = 25) -> dict[str, Any]:
        if self.proc is None:
            return {"error": self.error or "not started"}
        proc = self.proc
        loop = asyncio.get_running_loop()
        try:
            out, _ = await loop.run_in_executor(None, lambda: proc.communicate(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"error": "py-spy did not finish"}
        if proc.returncode != 0 or not self.out.exists():
            return {"error": f"py-spy failed: {out.decode(errors='replace')[-500:]}"}
        summary = analyze(self.out.read_text(errors="replace"), top)
        summary["raw_file"] = str(self.out)
        summary["rate_hz"] = self.rate
        return summary
