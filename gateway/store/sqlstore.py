"""The old home of the SQL store, kept so existing imports work: ``SqlStore(url)`` builds
``PostgresStore`` or ``SqliteStore`` for the URL (see ``gateway.store``)."""

from __future__ import annotations

from gateway.store.base import MIGRATIONS, SqlStore, normalize_url
from gateway.store.errors import is_connection_error as _is_connection_error
from gateway.store.errors import translate as _translate
from gateway.store.schema import a2a_push_configs
from gateway.store.sql_postgres import CLOSED_CHANNEL

__all__ = [
    "CLOSED_CHANNEL",
    "MIGRATIONS",
    "SqlStore",
    "_is_connection_error",
    "_translate",
    "a2a_push_configs",
    "normalize_url",
]
