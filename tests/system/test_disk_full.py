"""A full disk under the SQLite database: 503 with Retry-After (not 500), one clear log line,
/readyz failing while it lasts, recovery when space returns (issue 13, item 2).

The disk is real: a size-limited tmpfs mounted for the test (needs root, as in CI), filled with
a file until writes fail with ENOSPC."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.testing import eventually
from tests.conftest import free_port, serving_agent
from tests.helpers import make_test_agent
from tests.procs import GatewayProcess


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write ``path`` until the file system has no space left."""
    chunk = b"\0" * 65536
    with path.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), path.open("ab") as f:  # the last bytes too
        while True:
            f.write(b"\0")
            f.flush()
    return path


async def test_a_full_disk_answers_503_fails_readiness_and_recovers_when_space_returns(
    tmp_path: Path,
) -> None:
    agent = make_test_agent()
    with small_disk(tmp_path / "disk") as disk:
        db = f"sqlite:///{disk}/swarmgate.db"
        log = tmp_path / "gateway.log"
        async with serving_agent(agent) as agent_url:
            gw = GatewayProcess(db, free_port(), log=log)
            await gw.start()
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{gw.url}/api/agents", json=agent.spec(agent_url).to_json()
                    ) as r:
                        assert r.status == 201, await r.text()
                    filler = fill(disk / "filler")
                    statuses: list[int] = []

                    async def start_refused() -> bool:
                        payload = {"pad": "x" * 20000, "n": len(statuses)}
                        async with http.post(f"{gw.url}/nexus/worker/echo", json=payload) as r:
                            statuses.append(r.status)
                            if r.status == 503:
                                assert r.headers["Retry-After"]
                                assert "disk is full" in (await r.json())["message"]
                                return True
                            assert r.status in (200, 201), await r.text()
                            return False

                    # WAL space freed by a checkpoint can still take a few writes
                    await eventually(start_refused, timeout=20, what="a start refused with 503")
                    assert 500 not in statuses
                    async with http.get(f"{gw.url}/readyz") as r:
                        assert r.status == 503
                        assert (await r.json())["error"] == "database disk full"
                    async with http.get(f"{gw.url}/healthz") as r:
                        assert r.status == 200  # alive, only not ready

                    os.unlink(filler)  # space returns

                    async def started() -> bool:
                        async with http.post(f"{gw.url}/nexus/worker/echo", json={}) as r:
                            return r.status in (200, 201)

                    await eventually(started, timeout=20, what="starts succeed again")

                    async def ready() -> bool:
                        async with http.get(f"{gw.url}/readyz") as r:
                            return r.status == 200

                    await eventually(ready, timeout=20, what="ready again")
                text = log.read_text(errors="replace")
                assert text.count("database disk is full") == 1, gw.tail()
                assert "Traceback" not in text
            finally:
                gw.kill()
