"""An unhandled store error logs one line with the store's message, never the statement's
parameters (issue 13, item 15): SQLAlchemy's own text of a failed statement ends in
"[parameters: ...]", which held an endpoint password here."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from gateway.logs import JsonFormatter, configure
from tests.conftest import make_settings, running_gateway

SECRET = "hunter2-endpoint-password"

SQLITE_BREAK = (
    "CREATE TRIGGER sg_break BEFORE INSERT ON sg_agents BEGIN SELECT * FROM sg_no_such_table; END"
)
PG_BREAK = [
    "CREATE FUNCTION sg_break() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
    " LANGUAGE plpgsql",
    "CREATE TRIGGER sg_break BEFORE INSERT ON sg_agents FOR EACH ROW EXECUTE FUNCTION sg_break()",
]


async def test_a_failed_insert_is_a_500_whose_log_holds_no_parameter(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(make_settings(db_url)) as gw:
        async with gw.gw.store.engine.begin() as conn:  # every insert of an agent now fails
            for stmt in PG_BREAK if db_url.startswith("postgresql") else [SQLITE_BREAK]:
                await conn.execute(sa.text(stmt))
        registration = {
            "name": "leaky",
            "endpoint": f"http://svc:{SECRET}@127.0.0.1:1",
            "operations": [{"name": "op"}],
        }
        with caplog.at_level(logging.DEBUG, logger="swarmgate"):
            async with gw.http.post(f"{gw.url}/api/agents", json=registration) as r:
                assert r.status == 500
                assert SECRET not in await r.text()
        formatter = JsonFormatter()
        for record in caplog.records:
            assert SECRET not in formatter.format(record), record.getMessage()
        assert SECRET not in caplog.text
        records = [r for r in caplog.records if r.name.startswith("swarmgate")]
        assert any("store error on POST /api/agents" in r.getMessage() for r in records)


def test_debug_logging_keeps_the_drivers_that_log_parameters_quiet() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("json", "DEBUG")
        for name in ("aiosqlite", "sqlalchemy.engine"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("swarmgate.http").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
