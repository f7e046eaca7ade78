"""``swarmgate`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.app import serve
from gateway.config import Settings
from gateway.store.sqlstore import SqlStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarmgate", description="Durable agent RPC gateway")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the gateway (settings from SWARMGATE_* variables)")
    s.add_argument("--port", type=int)
    s.add_argument("--host")
    sub.add_parser("migrate", help="apply database migrations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    if args.cmd == "serve":
        if args.port or args.host:
            from dataclasses import replace

            settings = replace(
                settings, port=args.port or settings.port, host=args.host or settings.host
            )
        asyncio.run(serve(settings))
        return 0
    if args.cmd == "migrate":

        async def migrate() -> None:
            store = SqlStore(settings.database_url)
            await store.migrate()
            await store.close()

        asyncio.run(migrate())
        print("migrations applied")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
