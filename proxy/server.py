"""`querybase serve`: the process lifespan — migrate, bind the listeners, report ready, stop on a signal.

The process binds the PostgreSQL and MySQL listeners and the admin listener (the admin API of
admin_api/, in this event loop), keeps the store migrated, and owns the one SessionRegistry of
live client sessions that the front ends and the admin API share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Iterator

import structlog
import uvicorn

from admin_api.app import create_app
from admin_api.audit import EXTRA as AUDIT_EXTRA
from admin_api.deps import ApiContext
from admin_api.requests import EXTRA as CHANGES_EXTRA
from admin_api.tokens import derive_signing_key
from proxy.audit.log import AuditWriter, record_configuration
from proxy.changes.executor import Executor
from proxy.changes.notify import Notifier
from proxy.changes.service import ChangeService
from proxy.config import ListenAddress, Settings
from proxy.errors import ConfigError, StoreError, UpstreamConnectError
from proxy.observe.sessions import SessionRegistry
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox, load_key
from proxy.store.db import Store
from proxy.tlsfiles import server_context
from proxy.upstream.probe import Reachability
from proxy.wire.mysql.session import MySQLFrontend
from proxy.wire.pg.session import PgFrontend

log = structlog.get_logger("querybase.server")

SHUTDOWN_TIMEOUT = 10.0


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the process lifespan owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(key: str, address: ListenAddress) -> socket.socket:
    """Bind a listening TCP socket, or raise ConfigError naming the setting and the OS error."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=1024)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"{key}: cannot listen on {address}: {reason}") from None


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    tls = server_context(settings)  # a broken certificate stops startup now, not at the first client
    secret_key = load_key(settings)
    box = SecretBox(secret_key)
    store = Store(settings.store.url)
    try:
        await store.migrate()
        return await _run(settings, store, box, derive_signing_key(secret_key), tls)
    finally:
        await store.close()


async def _run(
    settings: Settings, store: Store, box: SecretBox, signing_key: bytes, tls: ssl.SSLContext | None
) -> int:
    loop = asyncio.get_running_loop()
    catalog = Catalog(store, box)
    sessions = SessionRegistry()
    notifier = Notifier(settings.notify, store)
    executor = Executor(store, catalog, notifier)
    changes = ChangeService(store, catalog, executor)
    # Logins and statement verdicts reach the chain through this writer; the front ends are given it
    # and refuse what must be recorded while it is not `healthy` (docs/audit.md).
    audit_writer = AuditWriter.from_settings(settings, store)
    await audit_writer.start()
    async with store.write_session() as session, session.begin():
        await record_configuration(session, settings, config_path=str(settings.config_path))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    admin: _EmbeddedUvicorn | None = None
    admin_task: asyncio.Task[None] | None = None
    pg_frontend: PgFrontend | None = None
    pg_server: asyncio.Server | None = None
    my_frontend: MySQLFrontend | None = None
    my_server: asyncio.Server | None = None

    listening = False

    reachability = Reachability(catalog)

    async def readiness() -> None:
        await store.ping()
        if not listening:
            raise StoreError("the listeners are not up yet")
        problem = await reachability.problem()
        if problem is not None:
            raise UpstreamConnectError(problem)

    try:
        # Bind every socket first, so a bad address stops startup before anything is served and
        # clients arriving while the MySQL version is learnt wait in the backlog, not refused.
        pg_sock = bind("postgres.listen", settings.postgres.listen) if settings.postgres.listen else None
        my_sock = bind("mysql.listen", settings.mysql.listen) if settings.mysql.listen else None
        admin_sock = bind("admin.listen", settings.admin.listen) if settings.admin.listen else None
        if pg_sock is not None:
            pg_frontend = PgFrontend(
                settings, store, catalog, tls, changes=changes, registry=sessions, audit=audit_writer
            )
            pg_server = await loop.create_server(pg_frontend.protocol, sock=pg_sock)
        if my_sock is not None:
            my_frontend = MySQLFrontend(
                settings, store, catalog, tls, changes=changes, registry=sessions, audit=audit_writer
            )
            await my_frontend.learn_server_version()
            my_server = await loop.create_server(my_frontend.protocol, sock=my_sock)
        if admin_sock is not None:
            api = ApiContext(
                settings=settings,
                store=store,
                catalog=catalog,
                box=box,
                readiness=readiness,
                sessions=sessions,
                signing_key=signing_key,
                extras={CHANGES_EXTRA: changes, AUDIT_EXTRA: audit_writer},
            )
            config = uvicorn.Config(create_app(api), log_config=None, lifespan="off", access_log=False)
            admin = _EmbeddedUvicorn(config)
            admin_task = asyncio.create_task(admin.serve(sockets=[admin_sock]))
            while not admin.started:
                if admin_task.done():
                    admin_task.result()
                    raise ConfigError(f"admin.listen: the admin listener on {settings.admin.listen} stopped")
                await asyncio.sleep(0.01)
        await notifier.start()
        executor.start()  # resolves requests a crash left executing, then runs and expires requests
        listening = True
        log.info(
            "ready",
            postgres=str(settings.postgres.listen) if settings.postgres.listen else None,
            mysql=str(settings.mysql.listen) if settings.mysql.listen else None,
            admin=str(settings.admin.listen) if settings.admin.listen else None,
            store=store.safe_url,
            config=str(settings.config_path),
        )
        await stop.wait()
        log.info("stopping")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        # Stop accepting, then let running statements finish (server.shutdown_timeout) while idle
        # sessions are told at once that the server is going away.
        for server in (pg_server, my_server):
            if server is not None:
                server.close()
        grace = settings.server.shutdown_timeout
        drains = []
        if pg_frontend is not None:
            drains.append(pg_frontend.drain(grace))
        if my_frontend is not None:
            drains.append(my_frontend.drain(grace))
        await asyncio.gather(*drains)
        if admin is not None and admin_task is not None:
            admin.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(admin_task, SHUTDOWN_TIMEOUT)
        await executor.close(SHUTDOWN_TIMEOUT)
        await notifier.close(SHUTDOWN_TIMEOUT)
        await audit_writer.close(SHUTDOWN_TIMEOUT)  # after everything that records events
    log.info("stopped")
    return 0
