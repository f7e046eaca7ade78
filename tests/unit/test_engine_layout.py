"""The engine's rooms: one concern per module behind the ``Engine`` facade, small, no HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.engine
import gateway.engine.engine
from gateway.engine import Engine, EngineConfig, StartRequest, StartResult, fingerprint

ENGINE = Path(gateway.engine.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_engine_module_is_longer_than_500_lines() -> None:
    lengths = {p.name: len(p.read_text().splitlines()) for p in ENGINE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 500} == {}


def test_no_engine_module_imports_aiohttp_or_the_http_layer() -> None:
    offenders = {
        p.name: sorted(
            m
            for m in imported_modules(p)
            if m.split(".")[0] == "aiohttp" or m.startswith("gateway.http")
        )
        for p in ENGINE.glob("*.py")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_every_engine_module_says_what_it_owns_in_a_docstring() -> None:
    missing = [
        p.name for p in ENGINE.glob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert missing == []


def test_the_package_and_the_old_module_export_the_same_public_names() -> None:
    for name in gateway.engine.__all__:
        assert getattr(gateway.engine.engine, name) is getattr(gateway.engine, name), name
    assert {Engine, EngineConfig, StartRequest, StartResult, fingerprint} <= {
        getattr(gateway.engine, n) for n in gateway.engine.__all__
    }
