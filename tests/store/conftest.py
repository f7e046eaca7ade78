"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store import SqlStore

SQLITE_FILE = "g.db"  # the file of ``sqlite_store`` in the test's tmp_path


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    """A migrated SQLite store in ``tmp_path / SQLITE_FILE``, closed after the test."""
    store = SqlStore(f"sqlite:///{tmp_path}/{SQLITE_FILE}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
