"""`source test`: log in with a source's stored logins (server version or the exact error), and
report what the read login could do on its own (the real boundary, docs/source-boundary.md).

Each login goes through QueryBase's own upstream code (`proxy.upstream.pg` / `.mysql`, with the
source's TLS mode and CA, and the read role's read-only session), exactly as the relay logs in.
When that login fails, the same login is tried with a driver library (asyncpg, PyMySQL): if the
driver gets in, the report says so, so an operator can tell a bad source definition from a
QueryBase bug. The read login's privilege queries run through the driver.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pymysql

from proxy.errors import QueryBaseError
from proxy.store.catalog import Catalog, SourceCredentials
from proxy.tlsfiles import describe_tls_failure, tls_required, upstream_context
from proxy.upstream.base import upstream_target
from proxy.upstream.mysql import UpstreamConnection as MySQLUpstream
from proxy.upstream.pg import UpstreamConnection as PgUpstream

CONNECT_TIMEOUT = 10.0
CHECK_TIMEOUT = 20.0  # the read login's privilege queries (catalogs of large databases)


class BoundaryCheckFailed(Exception):
    """Logged in (`version`), but the queries about the login's own privileges failed."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(reason)
        self.version, self.reason = version, reason


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


async def _postgres_login(
    creds: SourceCredentials, user: str, password: str | None, check: bool
) -> tuple[str, list[Finding] | None]:
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
        version = f"PostgreSQL {await conn.fetchval('SHOW server_version')}"
        if not check:
            return version, None
        try:
            return version, await _pg_boundary(conn)
        except asyncpg.PostgresError as exc:
            raise BoundaryCheckFailed(version, f"{exc.sqlstate}: {exc}") from None
    finally:
        await conn.close()


def _mysql_attempt(
    creds: SourceCredentials, user: str, password: str | None, use_tls: bool, check: bool
) -> tuple[str, list[Finding] | None]:
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
        version = f"MySQL-protocol server {conn.get_server_info()}"
        if not check:
            return version, None
        try:
            return version, _mysql_boundary(conn)
        except pymysql.err.MySQLError as exc:
            raise BoundaryCheckFailed(version, _describe(exc, view.tls)) from None
    finally:
        conn.close()


async def _mysql_login(
    creds: SourceCredentials, user: str, password: str | None, check: bool
) -> tuple[str, list[Finding] | None]:
    tls = creds.view.tls
    if tls == "disable":
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, False, check)
    if tls_required(tls):
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, True, check)
    try:  # prefer: TLS when the server offers it, else plain
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, True, check)
    except (pymysql.err.OperationalError, ssl.SSLError):
        return await asyncio.to_thread(_mysql_attempt, creds, user, password, False, check)


@dataclass(frozen=True)
class Boundary:
    """What the read login could do without QueryBase, as one `source test` found it."""

    login: str
    findings: tuple[Finding, ...]
    error: str | None = None  # the check did not run: the login failed, or a query did

    def as_dict(self) -> dict[str, Any]:
        return {
            "login": self.login,
            "findings": [f.as_dict() for f in self.findings],
            "error": self.error,
        }


@dataclass(frozen=True)
class SourceTest:
    logins: list[LoginResult]
    boundary: Boundary = field(repr=False)


async def relay_login(creds: SourceCredentials, role: str) -> str:
    """Log in as the relay does for `role` (TLS mode and CA, read-only session for `read`);
    the server's version. Raises UpstreamConnectError with the reason."""
    target = upstream_target(creds, role)
    if creds.view.engine == "postgresql":
        pg = await PgUpstream.connect(target, ())
        pg.close()
        return f"PostgreSQL {pg.parameter_status.get('server_version', '?')}"
    my = await MySQLUpstream.connect(target, ())
    my.close()
    return f"MySQL-protocol server {my.server_version}"


async def check_source(creds: SourceCredentials) -> SourceTest:
    """Try the read login and, if configured, the write login; check the read login's privileges."""
    logins = [("read", creds.view.read_user, creds.read_password)]
    if creds.view.write_user:
        logins.append(("write", creds.view.write_user, creds.write_password))
    login = _postgres_login if creds.view.engine == "postgresql" else _mysql_login
    results = []
    boundary = Boundary(creds.view.read_user, (), "the read login failed: nothing was checked")
    for role, user, password in logins:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 5):
                await relay_login(creds, role)
        except (QueryBaseError, TimeoutError) as exc:
            reason = _without_where(exc.message, creds) if isinstance(exc, QueryBaseError) else "timed out"
            results.append(
                LoginResult(role, user, False, await _driver_opinion(creds, user, password, reason))
            )
            continue
        try:
            detail, findings = await asyncio.wait_for(
                login(creds, user, password, role == "read"), CONNECT_TIMEOUT + CHECK_TIMEOUT
            )
            results.append(LoginResult(role, user, True, detail))
            if findings is not None:
                boundary = Boundary(user, tuple(findings))
        except TimeoutError:
            results.append(LoginResult(role, user, False, f"timed out after {CONNECT_TIMEOUT:.0f}s"))
        except BoundaryCheckFailed as exc:  # logged in, but the privilege queries failed
            results.append(LoginResult(role, user, True, exc.version))
            boundary = Boundary(user, (), f"the privilege check failed: {exc.reason}")
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            pymysql.err.MySQLError,
        ) as exc:
            results.append(LoginResult(role, user, False, _describe(exc, creds.view.tls)))
    return SourceTest(results, boundary)


def _without_where(message: str, creds: SourceCredentials) -> str:
    """The upstream code's error without the "upstream HOST:PORT of source NAME" the report's line
    already says."""
    view = creds.view
    where = f"upstream {view.host}:{view.port} of source {view.name!r}"
    for prefix, replacement in (
        (f"{where} refused QueryBase's login: ", "login refused: "),
        (f"cannot connect to {where}: ", "cannot connect: "),
        (f"{where}: ", ""),
        (f"{where} ", ""),
    ):
        if message.startswith(prefix):
            rest = message[len(prefix) :]
            return rest if rest.startswith(replacement) else replacement + rest
    return message


async def _driver_opinion(creds: SourceCredentials, user: str, password: str | None, reason: str) -> str:
    """QueryBase's login failed with `reason`: does a driver get in with the same settings?"""
    login = _postgres_login if creds.view.engine == "postgresql" else _mysql_login
    try:
        await asyncio.wait_for(login(creds, user, password, False), CONNECT_TIMEOUT)
    except Exception:  # the driver is refused too: the source definition (or the server) is at fault
        return reason
    driver = "asyncpg" if creds.view.engine == "postgresql" else "PyMySQL"
    return f"{reason} (but {driver} logs in with the same settings: please report this QueryBase bug)"


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


# ------------------------------------------------------------------------------ the real boundary
#
# What the read login could do on its own, without QueryBase in the way. QueryBase's classifier and
# the read-only session are defence in depth; the login's privileges are the boundary that holds
# when someone has the password, or when a classifier rule has a hole. Each engine's check runs as
# the read login itself, reading only what any login may read about itself, and reports findings.

HIGH, MEDIUM, LOW = "high", "medium", "low"
EXAMPLES = 5  # objects named per finding; the count says how many there are


@dataclass(frozen=True)
class Finding:
    """One thing the read login could do without QueryBase: `what` it holds, `why` it matters."""

    code: str  # stable identifier, e.g. "table_write", "superuser", "global_privilege"
    severity: str  # high: changes data or the server on its own; medium: beyond the source's scope; low: note
    what: str
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "severity": self.severity, "what": self.what, "why": self.why}


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:EXAMPLES])
    return shown + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


# -- PostgreSQL

_PG_USER_SCHEMA = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)


def _catalog_sql(template: str) -> str:
    """Fill in the two conditions every catalog query shares (constants only, never input):
    @USER_SCHEMA@ (not a system schema) and @MEMBER(col)@ (col is a role the login is or may
    become: itself, or any role it is a member of, directly or through others)."""
    text = template.replace("@USER_SCHEMA@", _PG_USER_SCHEMA)
    while "@MEMBER(" in text:
        head, _, rest = text.partition("@MEMBER(")
        column, _, tail = rest.partition(")@")
        text = f"{head}pg_has_role(current_user, {column}, 'MEMBER'){tail}"
    return text


_PG_ROLES_SQL = """
SELECT rolname, rolname = current_user AS self, rolsuper, rolcreaterole, rolcreatedb,
       rolbypassrls, rolreplication
  FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER') ORDER BY rolname
"""

_PG_OWNED_SQL = _catalog_sql("""
SELECT 'database' AS kind, quote_ident(datname) AS name FROM pg_database
 WHERE datname = current_database() AND @MEMBER(datdba)@
UNION ALL
SELECT 'schema', quote_ident(n.nspname) FROM pg_namespace n
 WHERE @USER_SCHEMA@ AND @MEMBER(n.nspowner)@
UNION ALL
SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                      WHEN 'f' THEN 'foreign table' ELSE 'table' END, c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND @USER_SCHEMA@
   AND @MEMBER(c.relowner)@
UNION ALL
SELECT 'function', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE @USER_SCHEMA@ AND @MEMBER(p.proowner)@
UNION ALL
SELECT 'large object', l.oid::text FROM pg_largeobject_metadata l
 WHERE @MEMBER(l.lomowner)@
ORDER BY 1, 2
""")

# Write privileges on relations it does not own, in schemas it may use (PUBLIC's grants included).
_PG_TABLE_SQL = _catalog_sql("""
WITH m AS (SELECT oid FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))
SELECT c.oid::regclass::text AS name, c.relkind::text AS kind,
       bool_or(c.relkind <> 'S' AND has_any_column_privilege(m.oid, c.oid, 'INSERT')) AS ins,
       bool_or(c.relkind <> 'S' AND has_any_column_privilege(m.oid, c.oid, 'UPDATE')) AS upd,
       bool_or(c.relkind <> 'S' AND has_table_privilege(m.oid, c.oid, 'DELETE')) AS del,
       bool_or(c.relkind <> 'S' AND has_table_privilege(m.oid, c.oid, 'TRUNCATE')) AS trunc,
       bool_or(c.relkind <> 'S' AND has_table_privilege(m.oid, c.oid, 'TRIGGER')) AS trig,
       bool_or(c.relkind = 'S' AND (has_sequence_privilege(m.oid, c.oid, 'UPDATE')
                                    OR has_sequence_privilege(m.oid, c.oid, 'USAGE'))) AS seq
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace CROSS JOIN m
 WHERE c.relkind IN ('r', 'p', 'v', 'f', 'S') AND @USER_SCHEMA@
   AND NOT @MEMBER(c.relowner)@
   AND has_schema_privilege(m.oid, n.oid, 'USAGE')
 GROUP BY c.oid, c.relkind
 ORDER BY 1
""")

_PG_CREATE_SQL = _catalog_sql("""
WITH m AS (SELECT oid FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))
SELECT 'database' AS kind, quote_ident(current_database()) AS name
 WHERE EXISTS (SELECT FROM m WHERE has_database_privilege(m.oid, current_database(), 'CREATE'))
UNION ALL
SELECT 'schema', quote_ident(n.nspname) FROM pg_namespace n
 WHERE @USER_SCHEMA@ AND NOT @MEMBER(n.nspowner)@
   AND EXISTS (SELECT FROM m WHERE has_schema_privilege(m.oid, n.oid, 'CREATE'))
ORDER BY 1, 2
""")

_PG_FUNCTION_SQL = _catalog_sql("""
WITH m AS (SELECT oid FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))
SELECT p.oid::regprocedure::text AS name, p.prosecdef AS definer, p.prokind::text AS kind,
       pg_get_userbyid(p.proowner) AS owner
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE @USER_SCHEMA@ AND NOT @MEMBER(p.proowner)@
   AND EXISTS (SELECT FROM m WHERE has_function_privilege(m.oid, p.oid, 'EXECUTE')
                                AND has_schema_privilege(m.oid, n.oid, 'USAGE'))
 ORDER BY 1
""")

_PG_OTHER_SQL = """
WITH m AS (SELECT oid FROM pg_roles WHERE pg_has_role(current_user, oid, 'MEMBER'))
SELECT 'foreign server' AS kind, quote_ident(s.srvname) AS name FROM pg_foreign_server s
 WHERE EXISTS (SELECT FROM m WHERE has_server_privilege(m.oid, s.oid, 'USAGE'))
UNION ALL
SELECT 'large object', l.oid::text FROM pg_largeobject_metadata l
 WHERE NOT pg_has_role(current_user, l.lomowner, 'MEMBER')
   AND EXISTS (SELECT FROM aclexplode(l.lomacl) a
                WHERE a.privilege_type = 'UPDATE'
                  AND (a.grantee = 0 OR pg_has_role(current_user, a.grantee, 'MEMBER')))
ORDER BY 1, 2
"""

# Predefined roles that let a login act beyond reading the source's tables.
PG_PRIVILEGED_ROLES: dict[str, tuple[str, str]] = {
    "pg_write_all_data": (HIGH, "may INSERT, UPDATE and DELETE in every table of every database"),
    "pg_execute_server_program": (
        HIGH,
        "may run any program on the database server as its operating-system user (COPY … PROGRAM)",
    ),
    "pg_write_server_files": (HIGH, "may write files on the database server (COPY … TO 'file')"),
    "pg_read_server_files": (
        HIGH,
        "may read any file the database server can (COPY … FROM 'file', pg_read_file): "
        "configuration, keys, every database's data files",
    ),
    "pg_signal_backend": (
        MEDIUM,
        "may cancel or terminate other sessions, including QueryBase's sessions of other users",
    ),
    "pg_read_all_data": (
        MEDIUM,
        "may read every table of every schema, whatever the source's schema allowlist",
    ),
    "pg_create_subscription": (MEDIUM, "may create logical-replication subscriptions that write into tables"),
    "pg_maintain": (MEDIUM, "may VACUUM, ANALYZE, REINDEX, REFRESH, CLUSTER and LOCK every table"),
    "pg_checkpoint": (LOW, "may force checkpoints (I/O load on the whole server)"),
    "pg_use_reserved_connections": (LOW, "may use the connection slots reserved for administrators"),
}

_PG_ATTRIBUTES: tuple[tuple[str, str, str, str], ...] = (
    # (pg_roles column, finding code, severity, why)
    (
        "rolcreaterole",
        "createrole",
        HIGH,
        "may create and alter roles, and so grant itself the membership of other roles "
        "(before PostgreSQL 16: any non-superuser role, the predefined ones included)",
    ),
    (
        "rolreplication",
        "replication",
        HIGH,
        "may open replication connections: stream every change of the whole cluster, all databases, "
        "and create replication slots that keep WAL until the disk is full",
    ),
    ("rolbypassrls", "bypassrls", MEDIUM, "row-level security policies do not apply to it"),
    (
        "rolcreatedb",
        "createdb",
        MEDIUM,
        "may create databases (and own everything in them); not a write to existing data",
    ),
)

_PG_TABLE_PRIVILEGES = (
    ("ins", "INSERT"),
    ("upd", "UPDATE"),
    ("del", "DELETE"),
    ("trunc", "TRUNCATE"),
    ("trig", "TRIGGER"),
)


def _via(role: str, is_self: bool) -> str:
    return "" if is_self else f" (through membership in role {role})"


async def _pg_boundary(conn: asyncpg.Connection) -> list[Finding]:
    findings: list[Finding] = []
    roles = await conn.fetch(_PG_ROLES_SQL)
    supers = [r for r in roles if r["rolsuper"]]
    if supers:
        role = supers[0]
        return [
            Finding(
                "superuser",
                HIGH,
                f"superuser{_via(role['rolname'], role['self'])}",
                "may do anything in every database of the cluster: write any table, change any "
                "setting, read server files, run programs on the server. QueryBase's read-only "
                "session does not bind a superuser",
            )
        ]
    for column, code, severity, why in _PG_ATTRIBUTES:
        for r in roles:
            if r[column]:
                findings.append(
                    Finding(code, severity, f"{code.upper()}{_via(r['rolname'], r['self'])}", why)
                )
    for r in roles:
        if r["rolname"] in PG_PRIVILEGED_ROLES:
            severity, why = PG_PRIVILEGED_ROLES[r["rolname"]]
            findings.append(Finding("privileged_role", severity, f"member of {r['rolname']}", why))
    members = [r["rolname"] for r in roles if not r["self"] and not r["rolname"].startswith("pg_")]
    owned: dict[str, list[str]] = {}
    for row in await conn.fetch(_PG_OWNED_SQL):
        owned.setdefault(row["kind"], []).append(row["name"])
    for kind, names in owned.items():
        findings.append(
            Finding(
                "owner",
                MEDIUM if kind == "large object" else HIGH,
                f"owns {len(names)} {kind}{'s' if len(names) > 1 else ''}: {_some(names)}"
                + (f" (itself or through {', '.join(members)})" if members else ""),
                "an owner may do anything to what it owns, whatever is granted: write, alter, drop, "
                "grant itself privileges, change the read-only session's rules for it",
            )
        )
    tables = await conn.fetch(_PG_TABLE_SQL)
    for column, privilege in _PG_TABLE_PRIVILEGES:
        names = [t["name"] for t in tables if t[column]]
        if names:
            findings.append(
                Finding(
                    "table_write",
                    HIGH,
                    f"{privilege} on {len(names)} table{'s' if len(names) > 1 else ''}: {_some(names)}",
                    "TRIGGER lets it attach code that runs on other sessions' writes"
                    if privilege == "TRIGGER"
                    else f"may {privilege} rows itself, with no change request or approval",
                )
            )
    sequences = [t["name"] for t in tables if t["seq"]]
    if sequences:
        findings.append(
            Finding(
                "sequence_write",
                MEDIUM,
                f"USAGE or UPDATE on {len(sequences)} sequence{'s' if len(sequences) > 1 else ''}: "
                f"{_some(sequences)}",
                "may advance or reset sequences (nextval, setval) that the application's inserts use",
            )
        )
    create: dict[str, list[str]] = {}
    for row in await conn.fetch(_PG_CREATE_SQL):
        create.setdefault(row["kind"], []).append(row["name"])
    if "database" in create:
        findings.append(
            Finding(
                "create",
                HIGH,
                f"CREATE on database {create['database'][0]}",
                "may create schemas, and own and write everything in them",
            )
        )
    if "schema" in create:
        names = create["schema"]
        findings.append(
            Finding(
                "create",
                HIGH,
                f"CREATE on schema{'s' if len(names) > 1 else ''} {_some(names)}",
                "may create tables, views and functions there; a function or view named like one "
                "other sessions use (search_path) runs their statements through its code",
            )
        )
    functions = await conn.fetch(_PG_FUNCTION_SQL)
    definers = [f"{f['name']} (owner {f['owner']})" for f in functions if f["definer"]]
    if definers:
        findings.append(
            Finding(
                "security_definer",
                HIGH,
                f"EXECUTE on {len(definers)} SECURITY DEFINER function{'s' if len(definers) > 1 else ''}: "
                f"{_some(definers)}",
                "each runs with its owner's privileges, not the login's: whatever it may do, the "
                "login may do through it",
            )
        )
    invokers = [f["name"] for f in functions if not f["definer"]]
    if invokers:
        findings.append(
            Finding(
                "execute",
                LOW,
                f"EXECUTE on {len(invokers)} non-built-in function{'s' if len(invokers) > 1 else ''} "
                f"or procedure{'s' if len(invokers) > 1 else ''}: {_some(invokers)}",
                "they run with the login's own privileges, so they add no power by themselves, but "
                "QueryBase cannot see what they do (its classifier treats unknown functions as writes)",
            )
        )
    other: dict[str, list[str]] = {}
    for row in await conn.fetch(_PG_OTHER_SQL):
        other.setdefault(row["kind"], []).append(row["name"])
    if "foreign server" in other:
        findings.append(
            Finding(
                "foreign_server",
                MEDIUM,
                f"USAGE on foreign server{'s' if len(other['foreign server']) > 1 else ''} "
                f"{_some(other['foreign server'])}",
                "may create foreign tables or dblink connections to another database, whose writes "
                "QueryBase never sees",
            )
        )
    if "large object" in other:
        names = other["large object"]
        findings.append(
            Finding(
                "large_object_write",
                MEDIUM,
                f"UPDATE on {len(names)} large object{'s' if len(names) > 1 else ''}: {_some(names)}",
                "may overwrite large objects' contents (lo_put, lowrite)",
            )
        )
    return findings


# -- MySQL / MariaDB
#
# SHOW GRANTS is the one place that lists everything a login holds (global, database, table,
# column, routine and proxy privileges, and roles); the information_schema privilege tables leave
# out routines, proxies and roles. Its lines are the server's own output, in a fixed grammar, read
# by a small tokenizer below (not patterns over the text).

MY_READ_PRIVILEGES = frozenset({"SELECT", "SHOW VIEW", "USAGE"})
_MY_ALL = "ALL PRIVILEGES"

# privilege → (severity, why). A privilege neither here nor in MY_READ_PRIVILEGES is reported at
# medium severity as "not a read privilege": the list of harmless ones is the allowlist.
MY_PRIVILEGES: dict[str, tuple[str, str]] = {
    _MY_ALL: (HIGH, "every privilege at that level: it may write, alter and drop"),
    "INSERT": (HIGH, "may insert rows itself, with no change request or approval"),
    "UPDATE": (HIGH, "may update rows itself, with no change request or approval"),
    "DELETE": (HIGH, "may delete rows itself, with no change request or approval"),
    "DELETE HISTORY": (HIGH, "may delete the history of system-versioned tables"),
    "CREATE": (HIGH, "may create databases or tables"),
    "DROP": (HIGH, "may drop databases, tables and views"),
    "ALTER": (HIGH, "may alter tables"),
    "INDEX": (HIGH, "may create and drop indexes"),
    "CREATE VIEW": (
        HIGH,
        "may create views (a view named like a table other sessions use changes what they read)",
    ),
    "CREATE ROUTINE": (HIGH, "may create stored procedures and functions"),
    "ALTER ROUTINE": (HIGH, "may alter and drop stored procedures and functions"),
    "EXECUTE": (
        HIGH,
        "may run stored routines; SQL SECURITY DEFINER ones run with their definer's privileges",
    ),
    "TRIGGER": (HIGH, "may create triggers: code that runs on other sessions' writes"),
    "EVENT": (HIGH, "may schedule events: statements the server runs later, as the login"),
    "GRANT OPTION": (HIGH, "may grant its privileges to other accounts"),
    "FILE": (
        HIGH,
        "may read and write files on the database server (LOAD_FILE, LOAD DATA INFILE, INTO OUTFILE)",
    ),
    "SUPER": (HIGH, "may change global settings (read_only included), kill any session, bypass read_only"),
    "READ_ONLY ADMIN": (HIGH, "may write while the server is read_only"),
    "CREATE USER": (HIGH, "may create, alter and drop accounts"),
    "SET USER": (HIGH, "may set a routine's or view's DEFINER to another account, and so act as it"),
    "PROXY": (HIGH, "may log in as another account (PROXY)"),
    "RELOAD": (MEDIUM, "may FLUSH (privileges, logs, tables) and RESET on the whole server"),
    "SHUTDOWN": (HIGH, "may shut the server down"),
    "PROCESS": (MEDIUM, "may see every session's running statement, other users' included"),
    "CONNECTION ADMIN": (MEDIUM, "may kill other users' connections and exceed connection limits"),
    "REPLICATION SLAVE": (HIGH, "may read the binary log: every change to every database"),
    "BINLOG ADMIN": (HIGH, "may purge the binary log and change its settings"),
    "BINLOG REPLAY": (HIGH, "may replay binary-log events (writes) with BINLOG"),
    "REPLICATION MASTER ADMIN": (MEDIUM, "may administer replication on the primary"),
    "REPLICATION SLAVE ADMIN": (HIGH, "may start, stop and point replication elsewhere"),
    "FEDERATED ADMIN": (HIGH, "may create federated servers (connections to other databases)"),
    "CREATE TABLESPACE": (HIGH, "may create, alter and drop tablespaces"),
    "LOCK TABLES": (MEDIUM, "may lock tables against other sessions' writes"),
    "REFERENCES": (LOW, "may create foreign keys referring to these tables (needs CREATE or ALTER too)"),
    "SHOW DATABASES": (LOW, "may list every database on the server, whatever the source's schema allowlist"),
    "REPLICATION CLIENT": (LOW, "may read replication and binary-log positions"),
    "BINLOG MONITOR": (LOW, "may read replication and binary-log positions"),
    "SLAVE MONITOR": (LOW, "may read replication status"),
    "REPLICA MONITOR": (LOW, "may read replication status"),
    "CREATE TEMPORARY TABLES": (LOW, "session-local tables only; noted, not a write to shared data"),
}
_MY_IGNORED = frozenset({"CREATE TEMPORARY TABLES"})  # session-local, reset with the connection


@dataclass(frozen=True)
class GrantLine:
    """One line of SHOW GRANTS: privileges on an object, or roles (no object)."""

    privileges: tuple[str, ...]  # upper case, "UPDATE (a,b)" as "UPDATE"; role names for role grants
    object_kind: str  # "" (database/table/global), PROCEDURE, FUNCTION, PACKAGE, PACKAGE BODY, PROXY, ROLE
    target: str  # *.*, `db`.*, `db`.`t`, `db`.`routine`, the proxied account; "" for roles
    grant_option: bool


def _grant_tokens(line: str) -> list[str]:
    """Identifiers in backticks and strings in quotes stay whole (quotes kept); punctuation alone."""
    tokens: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch.isspace():
            i += 1
        elif ch in "`'\"":
            j = i + 1
            while j < len(line):
                if (line[j] == ch and line[j + 1 : j + 2] == ch) or (line[j] == "\\" and ch != "`"):
                    j += 2  # a doubled quote or an escaped character
                elif line[j] == ch:
                    break
                else:
                    j += 1
            tokens.append(line[i : j + 1])
            i = j + 1
        elif ch.isalnum() or ch in "_$":
            j = i
            while j < len(line) and (line[j].isalnum() or line[j] in "_$"):
                j += 1
            tokens.append(line[i:j])
            i = j
        else:
            tokens.append(ch)
            i += 1
    return tokens


def _top_level_index(tokens: Sequence[str], word: str, start: int = 0) -> int:
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i] == "(":
            depth += 1
        elif tokens[i] == ")":
            depth -= 1
        elif depth == 0 and tokens[i].upper() == word:
            return i
    return -1


def _comma_list(tokens: Sequence[str], joiner: str) -> list[str]:
    """Top-level comma-separated items, each its tokens joined; parenthesised parts (column lists)
    left out."""
    items: list[str] = []
    words: list[str] = []
    depth = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok == ",":
            items.append(joiner.join(words))
            words = []
        elif depth == 0:
            words.append(tok)
    if words:
        items.append(joiner.join(words))
    return items


def parse_grant_line(line: str) -> GrantLine | None:
    """A SHOW GRANTS line as data; None for lines that grant nothing (SET DEFAULT ROLE, REVOKE)."""
    tokens = _grant_tokens(line)
    if not tokens or tokens[0].upper() != "GRANT":
        return None
    to = _top_level_index(tokens, "TO", 1)
    on = _top_level_index(tokens, "ON", 1)
    if to < 0:
        return None
    tail = [t.upper() for t in tokens[to:]]
    grant_option = any(tail[i : i + 3] == ["WITH", "GRANT", "OPTION"] for i in range(len(tail)))
    if on < 0 or on > to:  # GRANT role [, role] TO account
        return GrantLine(tuple(_comma_list(tokens[1:to], "")), "ROLE", "", grant_option)
    privileges = [p.upper() for p in _comma_list(tokens[1:on], " ")]
    target_tokens = tokens[on + 1 : to]
    kind = ""
    if privileges == ["PROXY"]:
        kind = "PROXY"
    else:
        while target_tokens and target_tokens[0].upper() in (
            "PROCEDURE",
            "FUNCTION",
            "PACKAGE",
            "BODY",
            "TABLE",
        ):
            word = target_tokens.pop(0).upper()
            if word != "TABLE":
                kind = f"{kind} {word}".strip()
    return GrantLine(tuple(privileges), kind, "".join(target_tokens), grant_option)


def _unquote(token: str) -> str:
    return token[1:-1].replace("``", "`") if token.startswith("`") else token


def mysql_findings(lines: Sequence[GrantLine], definers: dict[str, str]) -> list[Finding]:
    """Findings from the login's grant lines (and its roles'). `definers` maps `db`.`routine` of the
    routines it may see to their SQL SECURITY (DEFINER or INVOKER)."""
    grouped: dict[tuple[str, str], list[str]] = {}  # (privilege, kind) → targets
    for line in lines:
        if line.object_kind == "ROLE":
            continue
        privileges = list(line.privileges) + (["GRANT OPTION"] if line.grant_option else [])
        for privilege in privileges:
            name = _MY_ALL if privilege in ("ALL", _MY_ALL) else privilege
            if name in MY_READ_PRIVILEGES or name in _MY_IGNORED:
                continue
            grouped.setdefault((name, line.object_kind), []).append(line.target)
    findings = []
    for (privilege, kind), targets in grouped.items():
        targets = sorted(set(targets))
        if kind in ("PROCEDURE", "FUNCTION", "PACKAGE", "PACKAGE BODY") and privilege == "EXECUTE":
            definer = [t for t in targets if definers.get(t, "DEFINER") == "DEFINER"]
            invoker = [t for t in targets if t not in definer]
            if definer:
                findings.append(
                    Finding(
                        "security_definer",
                        HIGH,
                        f"EXECUTE on SQL SECURITY DEFINER {kind.lower()}: {_some(definer)}",
                        "runs with its definer's privileges, not the login's",
                    )
                )
            if invoker:
                findings.append(
                    Finding(
                        "execute",
                        LOW,
                        f"EXECUTE on {kind.lower()}: {_some(invoker)}",
                        "runs with the login's own privileges, but QueryBase cannot see what it does",
                    )
                )
            continue
        severity, why = MY_PRIVILEGES.get(
            privilege, (MEDIUM, "not a read privilege: QueryBase does not know what it allows")
        )
        where = f" on {kind.lower()} " if kind and kind != "PROXY" else " on "
        code = "global_privilege" if targets == ["*.*"] else "privilege"
        findings.append(Finding(code, severity, f"{privilege}{where}{_some(targets)}", why))
    return findings


def _mysql_boundary(conn: pymysql.connections.Connection) -> list[Finding]:
    """SHOW GRANTS for the login, and again under each role it may set (MariaDB's SET ROLE; MySQL's
    SHOW GRANTS … USING), plus the routines' SQL SECURITY it may read."""
    with conn.cursor() as cursor:
        cursor.execute("SHOW GRANTS")
        texts = [row[0] for row in cursor.fetchall()]
        lines = [g for g in map(parse_grant_line, texts) if g is not None]
        roles = [_unquote(r.split("@")[0]) for g in lines if g.object_kind == "ROLE" for r in g.privileges]
        mariadb = "mariadb" in conn.get_server_info().lower()
        for role in dict.fromkeys(roles):
            if mariadb:
                cursor.execute("SET ROLE %s", (role,))
                cursor.execute("SHOW GRANTS")
            else:
                cursor.execute("SHOW GRANTS FOR CURRENT_USER() USING %s", (role,))
            lines += [g for g in (parse_grant_line(row[0]) for row in cursor.fetchall()) if g is not None]
        cursor.execute("SELECT ROUTINE_SCHEMA, ROUTINE_NAME, SECURITY_TYPE FROM information_schema.ROUTINES")
        definers = {
            f"`{schema.replace('`', '``')}`.`{name.replace('`', '``')}`": security
            for schema, name, security in cursor.fetchall()
        }
    return mysql_findings(lines, definers)
