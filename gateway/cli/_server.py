"""Server-side commands: ``serve`` (one clear line when it cannot start), ``migrate``, ``token``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import secrets
import sys
from pathlib import Path
from typing import TextIO

from gateway import workers
from gateway.cli._format import (
    EXIT_ERROR,
    EXIT_USAGE,
    CommandError,
    UsageError,
    fail,
    run_event_loop,
)
from gateway.config import Settings
from gateway.domain.errors import ConfigError

# -- token ----------------------------------------------------------------------------------


def _sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (parsed.database or "") if parsed.get_backend_name() == "sqlite" else None


async def stored_jwt_secret(settings: Settings) -> str:
    """The gateway's 'jwt_secret' setting (created, as the gateway would, if missing).

    Never creates a database: a SQLite file that is not there is an error."""
    from gateway.store.sqlstore import SqlStore

    path = _sqlite_file(settings.database_url)
    if path is not None and (path in ("", ":memory:") or not Path(path).is_file()):
        raise CommandError(
            f"no gateway database at {path or settings.database_url!r}: start the gateway once "
            "(it stores its JWT secret there), or set SWARMGATE_JWT_SECRET"
        )

    store = SqlStore(settings.database_url, **settings.store_options())
    try:
        if not await store.migrations_current():
            raise CommandError(
                "the database is not migrated; run `swarmgate migrate` or start the gateway once"
            )
        return await store.get_or_create_setting("jwt_secret", secrets.token_urlsafe(32))
    finally:
        await store.close()


def _safe_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database url>"


def token_command(args: argparse.Namespace, out: TextIO) -> None:
    from registry.auth import AuthConfig, mint_token

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    if settings.auth_mode != "hs256":
        print(
            f"warning: SWARMGATE_AUTH_MODE is {settings.auth_mode}; "
            "the gateway does not check HS256 tokens",
            file=sys.stderr,
        )
    secret = settings.jwt_secret
    if not secret:
        try:
            secret = asyncio.run(stored_jwt_secret(settings))
        except CommandError:
            raise
        except Exception as exc:
            raise CommandError(
                f"cannot read the JWT secret from {_safe_url(settings.database_url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    try:
        config = AuthConfig(
            mode="hs256",
            secret=secret,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
        print(mint_token(config, args.sub, args.scope, ttl_s=args.ttl), file=out)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


# -- serve / migrate ------------------------------------------------------------------------


def startup_error(exc: BaseException, settings: Settings) -> str | None:
    """One line for a failure to start (port busy, database down, ...); None: not one of those."""
    from gateway.domain.errors import StoreError

    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}"
    if isinstance(exc, StoreError):
        return (
            f"cannot open the database {_safe_url(settings.database_url)} "
            f"(SWARMGATE_DATABASE_URL): {exc or type(exc).__name__}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use "
            "(another gateway? choose SWARMGATE_PORT or --port)"
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
        return f"cannot listen on {where}: {exc.strerror} (SWARMGATE_HOST / SWARMGATE_PORT)"
    return None


def serve_command(args: argparse.Namespace) -> None:
    """Run the gateway; a failure to start is one line on stderr and a non-zero exit."""
    from dataclasses import replace

    from gateway.app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()
    if args.port is not None or args.host:
        port = settings.port if args.port is None else args.port
        settings = replace(settings, port=port, host=args.host or settings.host)
    workers.check(settings)
    started = False

    async def run() -> None:
        nonlocal started
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(settings, ready=ready))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        started = ready.is_set()
        waiting.cancel()
        await serving

    try:
        if settings.workers > 1:
            sys.exit(workers.Supervisor(settings, workers.migrate_once).run())
        run_event_loop(run(), settings.event_loop)
    except Exception as exc:
        message = None if started else startup_error(exc, settings)
        if message is None:
            raise
        fail(message, EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR)


def migrate_command(out: TextIO) -> None:
    from gateway.store.sqlstore import SqlStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings.from_env()

    async def migrate() -> None:
        store = SqlStore(settings.database_url)
        await store.migrate()
        await store.close()

    asyncio.run(migrate())
    print("migrations applied", file=out)
