"""`source test`: log in to a source with its stored logins and report the server version or the exact error.

Uses the driver libraries (asyncpg, PyMySQL), not QueryBase's own upstream code, so an operator
can tell a bad source definition from a QueryBase bug.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import asyncpg
import pymysql

from proxy.store.catalog import Catalog, SourceCredentials
from proxy.tlsfiles import describe_tls_failure, tls_required, upstream_context

CONNECT_TIMEOUT = 10.0


class NoTLS(OSError):
    """The source requires TLS and the server went on without it."""


@dataclass(frozen=True)
class LoginResult:
    role: str
    user: str
    ok: bool
    detail: str  # server version when ok, the driver's error otherwise


def _context(creds: SourceCredentials) -> ssl.SSLContext:
    return upstream_context(creds.view.tls, creds.tls_ca_pem)


async def _postgres_login(creds: SourceCredentials, user: str, password: str | None) -> str:
    view = creds.view
    # An SSLContext makes asyncpg refuse a server without TLS (require and the verify modes).
    ssl_arg: object = {"disable": False, "prefer": "prefer"}.get(view.tls) or _context(creds)
    conn = await asyncpg.connect(
        host=view.host,
        port=view.port,
        user=user,
        password=password,
        database=view.database,
        ssl=ssl_arg,
        timeout=CONNECT_TIMEOUT,
    )
    try:
        return f"PostgreSQL {await conn.fetchval('SHOW server_version')}"
    finally:
        await conn.close()


def _mysql_attempt(creds: SourceCredentials, user: str, password: str | None, use_tls: bool) -> str:
    """One PyMySQL login (blocking: run in a thread). PyMySQL rather than aiomysql: aiomysql leaks
    the socket of a failed TLS handshake, which `source test` exists to report."""
    view = creds.view
    conn = pymysql.connect(
        host=view.host,
        port=view.port,
        user=user,
        password=password or "",
        database=view.database,
        ssl=_context(creds) if use_tls else None,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=CONNECT_TIMEOUT,
    )
    try:
        if tls_required(view.tls):
            # PyMySQL goes on in the clear when the server offers no TLS: ask the server.
            with conn.cursor() as cursor:
                cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
                row = cursor.fetchone()
            if not row or not row[1]:
                raise NoTLS(f"the server does not offer TLS (tls = {view.tls})")
        return f"MySQL-protocol server {conn.get_server_info()}"
    finally:
        conn.close()


async def _mysql_login(creds: SourceCredentials, user: str, password: str | None) -> str:
    tls = creds.view.tls
    if tls == "disable":
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, False)
    if tls_required(tls):
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, True)
    try:  # prefer: TLS when the server offers it, else plain
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, True)
    except (pymysql.err.OperationalError, ssl.SSLError):
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, False)


async def test_logins(creds: SourceCredentials) -> list[LoginResult]:
    """Try the read login and, if configured, the write login."""
    logins = [("read", creds.view.read_user, creds.read_password)]
    if creds.view.write_user:
        logins.append(("write", creds.view.write_user, creds.write_password))
    login = _postgres_login if creds.view.engine == "postgresql" else _mysql_login
    results = []
    for role, user, password in logins:
        try:
            detail = await asyncio.wait_for(login(creds, user, password), CONNECT_TIMEOUT + 1)
            results.append(LoginResult(role, user, True, detail))
        except TimeoutError:
            results.append(LoginResult(role, user, False, f"timed out after {CONNECT_TIMEOUT:.0f}s"))
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            pymysql.err.MySQLError,
        ) as exc:
            results.append(LoginResult(role, user, False, _describe(exc, creds.view.tls)))
    return results


def _describe(exc: BaseException, tls: str) -> str:
    tls_failure = _ssl_cause(exc)
    if tls_failure is not None:
        return describe_tls_failure(tls_failure, tls)
    if isinstance(exc, NoTLS):
        return str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        return f"{exc.sqlstate}: {exc}"
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return f"errno {exc.args[0]}: {exc.args[1] if len(exc.args) > 1 else ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a driver's error (PyMySQL raises OperationalError 2003 from it)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Reachability:
    """For /readyz: is at least one source's server accepting TCP connections? Cached briefly so a
    probe every second costs at most one round of connects per `ttl`."""

    def __init__(self, catalog: Catalog, ttl: float = 10.0, timeout: float = 2.0) -> None:
        self.catalog, self.ttl, self.timeout = catalog, ttl, timeout
        self._checked_at = float("-inf")
        self._problem: str | None = None

    async def problem(self) -> str | None:
        """None when some source is reachable (or none is configured), else what failed."""
        now = time.monotonic()
        if now - self._checked_at < self.ttl:
            return self._problem
        sources = await self.catalog.list_sources()
        self._problem = None
        if sources:
            results = await asyncio.gather(*(self._probe(v.host, v.port) for v in sources))
            if not any(error is None for error in results):
                self._problem = "no source is reachable: " + "; ".join(
                    f"{v.name} ({v.host}:{v.port}: {error})"
                    for v, error in zip(sources, results, strict=True)
                )
        self._checked_at = now
        return self._problem

    async def _probe(self, host: str, port: int) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except OSError as exc:
            return exc.strerror or str(exc)
        writer.close()
        return None
