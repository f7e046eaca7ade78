"""The README's promises: "Your first agent in five minutes" works as written (its shell and
Python snippets are taken from the README and run, in a fresh directory, against a real gateway
and agent), and every setting the code reads is in the settings table."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing import ROOT, free_port

README = (ROOT / "README.md").read_text()
QUICKSTART = "## Your first agent in five minutes"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    before: str  # the prose between the previous block and this one


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start : end if end != -1 else len(README)]


def blocks(text: str) -> list[Block]:
    found = []
    last = 0
    for m in re.finditer(r"```(\w+)\n(.*?)```", text, re.S):
        found.append(Block(m.group(1), m.group(2), text[last : m.start()]))
        last = m.end()
    return found


@dataclass
class Shell:
    """Runs README lines with bash in ``cwd``, after the README's set-up lines."""

    cwd: Path
    setup: str
    env: dict[str, str]

    def script(self, command: str) -> list[str]:
        return ["bash", "-c", f"set -e\n{self.setup}\n{command}"]

    def run(self, command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.script(command),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def background(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.script(f"exec {command}"),
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} within {timeout}s: {log.read_text()}")


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[tuple[Shell, list[Block]]]:
    found = blocks(section(QUICKSTART))
    setup = found[0]
    assert setup.lang == "sh" and setup.code.startswith("make install && . .venv/bin/activate\n")
    port, agent_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARMGATE_", "VIRTUAL_ENV"))}
    # `make install && . .venv/bin/activate`, done: this test runs in that venv
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # free ports instead of 8080 / 9000, which may be taken on a test machine
    env["SWARMGATE_PORT"] = str(port)
    env["SWARMGATE_URL"] = f"http://127.0.0.1:{port}"
    shell = Shell(tmp_path, setup.code.split("\n", 1)[1], env)
    for block in found:
        if block.lang == "python":
            name = block.code.split("\n", 1)[0].removeprefix("# ").strip()
            assert name.endswith(".py"), block.code
            code = block.code.replace("port=9000", f"port={agent_port}")
            (tmp_path / name).write_text(code)
    yield shell, found[1:]


def expect(result: subprocess.CompletedProcess[str], comment: str) -> None:
    """A README line's comment says what it does: ``# {json}`` is its output, ``exit 1``."""
    if "exit 1" in comment:
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        return
    assert result.returncode == 0, result
    if comment.startswith("{"):
        assert json.loads(result.stdout) == json.loads(comment)
    if "token" in comment:
        assert re.fullmatch(r"[0-9a-f-]{36}\n", result.stdout), result.stdout


@pytest.mark.timeout(180)
def test_the_first_agent_in_five_minutes_works_as_written(
    quickstart: tuple[Shell, list[Block]], tmp_path: Path
) -> None:
    shell, steps = quickstart
    running: list[subprocess.Popen[bytes]] = []
    ran: list[str] = []
    try:
        for i, block in enumerate(steps):
            if block.lang != "sh":
                continue
            if "keeps running" in block.before:
                (command,) = block.code.strip().splitlines()
                log = tmp_path / f"step{i}.log"
                running.append(shell.background(command, log))
                wait_for_line(running[-1], log, "listening on", timeout=60)
                ran.append(command)
                continue
            for line in block.code.strip().splitlines():
                command, _, comment = line.partition("  # ")
                command = command.strip()
                if command.endswith("ops watch"):  # live until Ctrl-C: one refresh here
                    command += " --count 1"
                result = shell.run(command)
                expect(result, comment.strip())
                ran.append(command)
                if "ops watch" in command:
                    assert "hello/greet" in result.stdout and "succeeded" in result.stdout
                if "ops history" in command:
                    assert "started" in result.stdout or "STARTED" in result.stdout.upper()
        assert "`python call.py`" in section(QUICKSTART)
        called = shell.run("python call.py")
        assert called.returncode == 0, called
        assert called.stdout.strip() == "{'greeting': 'hello, Grace'}"
    finally:
        for proc in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    assert ran[:2] == ["swarmgate serve", "python hello.py"]
    assert len(ran) >= 7


def settings_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for pattern in ("gateway/**/*.py", "registry/**/*.py", "adapters/**/*.py"):
        names |= {n for path in ROOT.glob(pattern) for n in _names(path.read_text())}
    return names


def _names(text: str) -> set[str]:
    names = set(re.findall(r"SWARMGATE_[A-Z0-9_]*[A-Z0-9]", text))
    return names | {f"SWARMGATE_{n}" for n in re.findall(r'\bp \+ "([A-Z0-9_]+)"', text)}


def settings_in_the_readme_table() -> set[str]:
    table = section("## Running the gateway").split("| variable |", 1)[1].split("\n\n", 1)[0]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("|")]
    return {n for cell in first_cells for n in re.findall(r"`(SWARMGATE_[A-Z0-9_]+)`", cell)}


def test_every_setting_the_code_reads_is_in_the_readme_settings_table() -> None:
    read = settings_read_by_the_code()
    assert {"SWARMGATE_DATABASE_URL", "SWARMGATE_LEASE_S", "SWARMGATE_URL"} <= read
    assert sorted(read - settings_in_the_readme_table()) == []
