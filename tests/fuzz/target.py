"""The system under fuzz and the oracle's instruments.

`fuzz_gateway()` provisions one QueryBase home with a PostgreSQL source `fz_pg` and a MySQL source
`fz_my` on the real test servers, the fuzz users, and starts one real `querybase serve` with both
listeners (optionally under tests/fuzz/traced_serve.py, which adds tracemalloc snapshots on
request). The instruments: `rss_kib` (VmRSS), `scan_log` (error-level and traceback lines of
serve's JSON log), `checksums` (every table and the role/user catalogs, read as each database's
superuser) and `Health` (a psycopg and a PyMySQL session of another user answering queries
throughout).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.fuzz.known import known_issue
from tests.support.localdb import MARIADB_PASSWORDS, PG_PASSWORDS, MariaDBServer, PostgresCluster
from tests.support.pgfront import cli, listen_port
from tests.support.querybase import READY_TIMEOUT, SERVE_LOGS, admin_url, base_env, init_home

PG_SOURCE = "fz_pg"
MY_SOURCE = "fz_my"
TABLE = "fz_items"
# user → (group, level on both sources). fz_read and fz_propose are the fuzzing users; fz_login
# is the target of hostile logins (it may be locked out), fz_alt the COM_CHANGE_USER target,
# fz_health the other, legitimate session (on the write login, which the read login cannot
# signal or kill).
USERS = {
    "fz_read": ("fz_readers", "read"),
    "fz_propose": ("fz_proposers", "propose"),
    "fz_login": ("fz_readers", "read"),
    "fz_alt": ("fz_readers", "read"),
    "fz_health": ("fz_writers", "write"),
}
PASSWORDS = {name: f"{name}-Fuzz-pw-7" for name in USERS}
POOL_SIZE = 60

PG_TABLE_SQL = f"""
DROP TABLE IF EXISTS {TABLE} CASCADE;
CREATE TABLE {TABLE} (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO {TABLE} SELECT g, 'row ' || g FROM generate_series(1, 20) g;
GRANT SELECT ON {TABLE} TO qb_reader;
GRANT ALL ON {TABLE} TO qb_scram;
"""
MY_TABLE_SQL = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (id int PRIMARY KEY, name varchar(50));
INSERT INTO {TABLE} VALUES {", ".join(f"({i}, 'row {i}')" for i in range(1, 21))};
"""


@dataclass
class Target:
    config: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    pg: PostgresCluster
    maria: MariaDBServer
    host: str = "127.0.0.1"
    pg_port: int = 0
    my_port: int = 0
    snapshot_dir: Path | None = None  # traced serve: where snapshots are requested and written

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def provision(config: Path, pg: PostgresCluster, maria: MariaDBServer) -> None:
    pg.execute_sql(PG_TABLE_SQL)
    maria.execute_sql(MY_TABLE_SQL)
    env = {
        "PG_READ": PG_PASSWORDS["qb_reader"],
        "PG_WRITE": PG_PASSWORDS["qb_scram"],
        "MY_READ": MARIADB_PASSWORDS["qb_reader"],
        "MY_WRITE": MARIADB_PASSWORDS["qb_native"],
        **{f"PW_{name.upper()}": pw for name, pw in PASSWORDS.items()},
    }
    common = ("--database", "qbtest", "--tls", "disable", "--pool-size", str(POOL_SIZE))
    cli(
        config,
        *("source", "add", PG_SOURCE, "--engine", "postgresql", "--host", pg.host, "--port", str(pg.port)),
        *("--user", "qb_reader", "--password-env", "PG_READ", "--write-user", "qb_scram"),
        *("--write-password-env", "PG_WRITE", *common),
        env=env,
    )
    cli(
        config,
        *("source", "add", MY_SOURCE, "--engine", "mysql", "--host", maria.host, "--port", str(maria.port)),
        *("--user", "qb_reader", "--password-env", "MY_READ", "--write-user", "qb_native"),
        *("--write-password-env", "MY_WRITE", *common),
        env=env,
    )
    for group, level in dict(USERS.values()).items():
        cli(config, "group", "add", group)
        for source in (PG_SOURCE, MY_SOURCE):
            cli(config, "grant", group, source, level)
    for user, (group, _) in USERS.items():
        cli(config, "user", "add", user, "--password-env", f"PW_{user.upper()}", env=env)
        cli(config, "group", "member", "add", group, user)


def start(
    config: Path, *, traced: bool = False, trace_frames: int = 0
) -> tuple[subprocess.Popen[bytes], Path, Path | None]:
    """Start `querybase serve` (or the traced wrapper) with its log in a file; wait for /readyz."""
    log_path = config.parent / f"serve-fuzz-{time.monotonic_ns()}.log"
    SERVE_LOGS.append(log_path)  # the suite's secret scan covers this log too
    snapshot_dir = config.parent / "snapshots" if traced else None
    argv = [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"]
    env = base_env({"QB_TRACEMALLOC": str(trace_frames)})
    if snapshot_dir is not None:
        snapshot_dir.mkdir(exist_ok=True)
        argv = [
            sys.executable,
            str(Path(__file__).with_name("traced_serve.py")),
            str(snapshot_dir),
            *argv[3:],
        ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    url = admin_url(config)
    ready_timeout = READY_TIMEOUT * (6 if trace_frames else 1)  # tracemalloc slows imports a lot
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"querybase serve exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return process, log_path, snapshot_dir
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"querybase serve not ready after {ready_timeout}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def fuzz_gateway(
    pg: PostgresCluster, maria: MariaDBServer, home: Path, *, traced: bool = False, trace_frames: int = 0
) -> Iterator[Target]:
    config = init_home(home, tls_mode="allow")
    provision(config, pg, maria)
    process, log_path, snapshot_dir = start(config, traced=traced, trace_frames=trace_frames)
    target = Target(
        config,
        process,
        log_path,
        pg,
        maria,
        pg_port=listen_port(config, "postgres"),
        my_port=listen_port(config, "mysql"),
        snapshot_dir=snapshot_dir,
    )
    try:
        yield target
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


# ------------------------------------------------------------------------------ the log


@dataclass
class LogFindings:
    lines: int = 0
    error_lines: list[str] = field(default_factory=list)  # level error/critical, or not JSON
    tracebacks: list[str] = field(default_factory=list)
    leaked_tasks: list[str] = field(default_factory=list)  # asyncio's never-retrieved / destroyed-pending
    warnings: dict[str, int] = field(default_factory=dict)  # event → count, for the summary
    known: dict[str, int] = field(default_factory=dict)  # tests/fuzz/known.py id → matching lines


LEAK_MARKERS = (
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "Future exception was never retrieved",
)


def scan_log(path: Path) -> LogFindings:
    return scan_log_from(path, 0)


def scan_log_from(path: Path, offset: int, *, known: bool = True) -> LogFindings:
    """The findings in serve's log from byte `offset` on; with `known`, lines of the known bugs
    (tests/fuzz/known.py) are counted apart instead of as errors."""
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    found = LogFindings()
    for line in text.splitlines():
        if not line.strip():
            continue
        found.lines += 1
        issue = known_issue(line) if known else None
        if issue is not None:
            found.known[issue] = found.known.get(issue, 0) + 1
            continue
        if any(marker in line for marker in LEAK_MARKERS):
            found.leaked_tasks.append(line)
        if "Traceback (most recent call last)" in line or '"exception"' in line:
            found.tracebacks.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            found.error_lines.append(line)  # serve's log is JSON: anything else is a stray print
            continue
        level = str(event.get("level", "")).lower()
        if level in ("error", "critical", "exception"):
            found.error_lines.append(line)
        elif level == "warning":
            name = str(event.get("event", ""))
            found.warnings[name] = found.warnings.get(name, 0) + 1
    return found


# ------------------------------------------------------------------------------ the databases


def checksums(target: Target) -> dict[str, str]:
    """Every user table's contents and the catalogs an attack would change, as each superuser sees them."""
    pg_sql = """
SELECT 'relations',
       md5(coalesce(string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text, ',' ORDER BY 1), ''))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%'
   AND n.nspname NOT LIKE 'pg_toast_temp%';
SELECT 'roles', md5(string_agg(rolname || rolsuper::text || rolcreaterole::text || rolcanlogin::text
                               || coalesce(rolpassword, ''), ',' ORDER BY rolname)) FROM pg_authid;
SELECT 'role settings',
       md5(coalesce(string_agg(setrole::text || ':' || setdatabase::text || ':'
                               || array_to_string(setconfig, ';'), ',' ORDER BY 1), ''))
  FROM pg_db_role_setting;
SELECT 'functions', md5(string_agg(oid::text, ',' ORDER BY oid)) FROM pg_proc;
"""
    tables = [t for t in target.pg.execute_sql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
    ).split() if t]  # fmt: skip
    pg_sql += "".join(
        f"SELECT 'pg {t}', md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x;\n"
        for t in tables
    )
    out = {}
    for line in target.pg.execute_sql(pg_sql).splitlines():
        name, _, value = line.partition("|")
        out[f"pg {name}" if not name.startswith("pg ") else name] = value
    my_tables = [
        line.split("\t")
        for line in target.maria.execute_sql(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('information_schema', 'performance_schema', 'sys') "
            "AND table_type = 'BASE TABLE' ORDER BY 1, 2"
        ).splitlines()
        if line
    ]
    out["my tables"] = repr(my_tables)
    names = ", ".join(
        f"`{s}`.`{t}`" for s, t in my_tables if s != "mysql" or t in ("global_priv", "db", "tables_priv")
    )
    for line in target.maria.execute_sql(f"CHECKSUM TABLE {names} EXTENDED").splitlines():
        name, _, value = line.partition("\t")
        out[f"my {name}"] = value
    out["my databases"] = target.maria.execute_sql("SHOW DATABASES")
    return out


# ------------------------------------------------------------------------------ the other session


@dataclass
class HealthReport:
    queries: int = 0
    failures: list[str] = field(default_factory=list)
    max_latency: float = 0.0


class Health:
    """A psycopg and a PyMySQL session of fz_health, each running a query every `interval` seconds
    in its own thread, through QueryBase, for as long as the fuzzing runs."""

    def __init__(self, target: Target, interval: float = 0.25) -> None:
        self.target = target
        self.interval = interval
        self.pg = HealthReport()
        self.my = HealthReport()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(self._pg_query, self.pg), daemon=True),
            threading.Thread(target=self._run, args=(self._my_query, self.my), daemon=True),
        ]

    def __enter__(self) -> Health:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _pg_connect(self) -> object:
        import psycopg

        t = self.target
        return psycopg.connect(
            host=t.host, port=t.pg_port, dbname=PG_SOURCE, user="fz_health",
            password=PASSWORDS["fz_health"], sslmode="disable", connect_timeout=10, autocommit=True,
        )  # fmt: skip

    def _pg_query(self, conn: object) -> int:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()  # type: ignore[attr-defined]
        return int(row[0])

    def _my_connect(self) -> object:
        import pymysql

        t = self.target
        return pymysql.connect(
            host=t.host, port=t.my_port, user="fz_health", password=PASSWORDS["fz_health"],
            database=MY_SOURCE, connect_timeout=10, read_timeout=30, autocommit=True,
        )  # fmt: skip

    def _my_query(self, conn: object) -> int:
        with conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute(f"SELECT count(*) FROM {TABLE}")
            return int(cur.fetchone()[0])

    def _run(self, query: object, report: HealthReport) -> None:
        connect = self._pg_connect if report is self.pg else self._my_connect
        conn = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = connect()
                count = query(conn)  # type: ignore[operator]
                if count != 20:
                    report.failures.append(f"count {count} instead of 20")
                report.queries += 1
            except Exception as exc:
                report.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
            report.max_latency = max(report.max_latency, time.monotonic() - t0)
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # type: ignore[attr-defined]
