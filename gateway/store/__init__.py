"""Storage: the ``Store`` port (``gateway.domain.ports``) on PostgreSQL, SQLite and memory.

Where things are:

- ``base.SqlStore``: the portable transactions (SQLAlchemy Core) both databases share;
  ``SqlStore(url)`` builds the subclass for the URL. ``records.RecordTables``: the small
  tables (settings, registry, caller secrets, idempotency, A2A push configs).
- ``postgres.PostgresStore``: asyncpg lanes for the hot path, NOTIFY/LISTEN on closing, the
  batch (unnest) statements, the advisory-locked migration.
- ``sqlite.SqliteStore``: WAL, ``BEGIN IMMEDIATE``, the aiosqlite batch path.
- ``memory.MemoryStore``: the same semantics in a process, for fast unit tests (its
  tables and small-table methods in ``memory_records``).
- ``rows``: row <-> dataclass mapping, generated from ``gateway.domain.model``.
- ``errors``: driver errors -> ``gateway.domain.errors.StoreError`` subclasses.
- ``schema``: the table definitions; ``migrations/``: the DDL history (alembic).

All SQL text is in three modules: ``statements`` (portable Core statements, built once),
``sql_postgres`` (PostgreSQL's raw SQL strings) and ``sql_sqlite`` (SQLite's raw SQL strings
and pragmas). Statements built per call (optional filters, upserts of the small tables) stay
next to their method in ``base`` / ``records``.
"""

from __future__ import annotations

from typing import Any

from gateway.domain.ports import Store
from gateway.store.base import SqlStore, normalize_url
from gateway.store.memory import MemoryStore
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

MEMORY_URL = "memory://"


def open_store(url: str, **options: Any) -> SqlStore | MemoryStore:
    """The store for a database URL: ``postgresql://...``, ``sqlite:///path`` or
    ``memory://`` (one process, nothing kept). Options go to ``SqlStore`` (``pool_size``,
    ``sqlite_synchronous``)."""
    if url.startswith("memory:"):
        return MemoryStore()
    return SqlStore(url, **options)


def _conforms(memory: MemoryStore, sql: SqlStore) -> tuple[Store, Store]:
    """Never called: mypy checks here that both implementations satisfy the port."""
    return memory, sql


__all__ = [
    "MEMORY_URL",
    "MemoryStore",
    "PostgresStore",
    "SqlStore",
    "SqliteStore",
    "normalize_url",
    "open_store",
]
