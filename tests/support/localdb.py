"""Throwaway PostgreSQL and MariaDB servers from the system binaries, with QueryBase's test logins.

Theory of operation
-------------------
Each server owns one base directory::

    basedir/data             the cluster / datadir: created on first start, reused afterwards
    basedir/postgres.log     PostgreSQL: initdb and server output
    basedir/.s.PGSQL.<port>  PostgreSQL: the unix socket
    basedir/mariadb.log      MariaDB: install-db and server output
    basedir/mariadb.sock     MariaDB: the unix socket (next to mariadbd.pid and files/)

`start()` initialises the data directory if needed, starts the server on 127.0.0.1 only (on a
free port unless one is given), waits until it accepts connections, then creates the logins and
the `qbtest` database idempotently, so a persistent directory such as `.demo/pg` can be started
again and again. If a server already runs from that directory (a live pid file), `start()`
adopts it instead and sets `reused`. `stop()` shuts the server down cleanly, whoever started it.
Both classes are context managers: start on enter, stop on exit.

The superuser side always goes through the unix socket and the command-line clients (psql,
mariadb), never TCP: PostgreSQL's `local` line is `trust`, MariaDB's root@localhost has no
password and its TCP root accounts are dropped. Only the server's own account (and root) may use
the socket: PostgreSQL has `unix_socket_permissions=0700`, MariaDB's base directory is mode 0700.

Running as root: PostgreSQL refuses root, so initdb, pg_ctl and the postmaster run as the
`postgres` system user and the base directory is chowned to it. That user must be able to reach
the base directory, which rules out root-only trees such as pytest's `/tmp/pytest-of-root` (mode
0700); `start()` checks and says so. mariadbd runs as root itself (`--user=root`), no chown needed.

Like the postmaster under pg_ctl, mariadbd is started detached (a grandchild in its own session),
so a demo script may exit and leave it running; `stop()` finds it through its pid file.

The servers are disposable: PostgreSQL runs with `fsync=off` and MariaDB with
`innodb_flush_log_at_trx_commit=2`. Fine for tests and demos, wrong for anything else.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, NamedTuple, Self
from urllib.parse import quote

HOST = "127.0.0.1"
DATABASE = "qbtest"
START_TIMEOUT = 60.0  # seconds for each of: initialise, start, stop
POLL_INTERVAL = 0.05

PG_ADMIN = "qb_admin"  # superuser; trust on the unix socket, SCRAM over TCP
PG_TRUST_USER = "qb_trust"  # logs in over TCP with no password (pg_hba `trust`)
PG_ROLES = ("qb_admin", "qb_scram", "qb_md5", "qb_trust", "qb_reader")
PG_PASSWORDS: Mapping[str, str] = MappingProxyType(
    {
        "qb_admin": "qb-admin-secret",  # SCRAM-SHA-256
        "qb_scram": "qb-scram-secret",  # SCRAM-SHA-256 verifier, pg_hba scram-sha-256
        "qb_md5": "qb-md5-secret",  # md5 hash, pg_hba md5
        "qb_reader": "qb-reader-secret",  # SCRAM-SHA-256; may only read
    }
)

MARIADB_ROOT = "root"  # no password, unix socket only
MARIADB_PASSWORDS: Mapping[str, str] = MappingProxyType(
    {
        "qb_native": "qb-native-secret",  # mysql_native_password; ALL on qbtest
        "qb_reader": "qb-reader-secret",  # mysql_native_password; SELECT on qbtest
    }
)

_SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
_BIND_FAILURES = ("Address already in use", "could not bind", "Can't start server: Bind")


class LocalServerError(RuntimeError):
    """A local server could not be found, initialised, started, provisioned or stopped."""


# --------------------------------------------------------------------------------------------
# Shared helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _failure(message: str, log: Path) -> LocalServerError:
    return LocalServerError(f"{message}\n--- last lines of {log} ---\n{log_tail(log)}")


def _clean_env(home: str | None = None) -> dict[str, str]:
    """The environment for server and client programs, minus variables that would redirect them."""
    prefixes = ("PG", "MYSQL", "MARIADB")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    if home is not None:
        env["HOME"] = home
    return env


def _pid_alive(pid: int, *programs: str) -> bool:
    """Whether `pid` is a live, non-zombie process; with /proc, also that it runs `programs`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # without procfs, trust kill()
    # /proc/<pid>/stat is "pid (comm) state ..."; comm may itself contain spaces and parentheses.
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return rest.split()[0] != "Z" and comm in {name[:15] for name in programs}  # comm is truncated


def _wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    log: Path,
    gone: Callable[[], bool] = lambda: False,
) -> None:
    """Poll `ready()`; raise with the log tail on timeout, or at once when `gone()` (it died)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if gone():
            raise _failure(f"{what}: the server exited", log)
        if time.monotonic() > deadline:
            raise _failure(f"{what}: not ready after {timeout:.0f} s", log)
        time.sleep(POLL_INTERVAL)


def _read_from(path: Path, offset: int) -> str:
    with path.open(errors="replace") as f:
        f.seek(offset)
        return f.read()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise LocalServerError(
            f"unix socket path {path} is over {_SUN_PATH_MAX} bytes; use a shorter base directory"
        )


def _find_program(*names: str) -> Path:
    """The first of `names` on PATH or in /usr/sbin (not on a normal user's PATH)."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        if found:
            return Path(found)
    raise LocalServerError(f"none of {', '.join(names)} is installed (install mariadb-server)")


def _version_key(bindir: Path) -> tuple[int, ...]:
    parts = bindir.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


@functools.cache
def find_pg_bindir() -> Path:
    """Where initdb, pg_ctl and postgres live: the newest /usr/lib/postgresql/*/bin (Debian),
    else `pg_config --bindir`, else the directory of initdb on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise LocalServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install postgresql"
    )


# --------------------------------------------------------------------------------------------
# PostgreSQL

_PG_HBA = """\
# Written by tests/support/localdb.py at every start; edits are overwritten.
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       all                     trust
host    all       qb_trust  127.0.0.1/32  trust
host    all       qb_md5    127.0.0.1/32  md5
host    all       all       127.0.0.1/32  scram-sha-256
"""

# Settings given on the postgres command line, so that a persistent data directory can move ports.
_PG_SETTINGS = {
    "listen_addresses": HOST,
    "unix_socket_permissions": "0700",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}


def _pg_provision_sql() -> str:
    """Roles and the qbtest database, run in database `postgres`; every statement is idempotent."""
    pw = {user: secret.replace("'", "''") for user, secret in PG_PASSWORDS.items()}
    roles = ", ".join(f"'{role}'" for role in PG_ROLES)
    logins = ", ".join(role for role in PG_ROLES if role != PG_ADMIN)
    # Built from this module's constants only, never from input.
    return f"""
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY[{roles}] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        END IF;
    END LOOP;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE qb_admin PASSWORD '{pw["qb_admin"]}';
ALTER ROLE qb_scram PASSWORD '{pw["qb_scram"]}';
ALTER ROLE qb_reader PASSWORD '{pw["qb_reader"]}';
ALTER ROLE qb_trust PASSWORD NULL;
SET password_encryption = 'md5';
ALTER ROLE qb_md5 PASSWORD '{pw["qb_md5"]}';
RESET password_encryption;
SELECT 'CREATE DATABASE {DATABASE} OWNER qb_admin'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}') \\gexec
GRANT CONNECT, TEMPORARY ON DATABASE {DATABASE} TO {logins};
"""


# Run in qbtest: qb_scram may create tables and write, qb_reader may only read. Default privileges
# extend that to tables qb_admin (execute_sql, the demo data) or qb_scram create later.
_PG_QBTEST_SQL = """
GRANT CREATE ON SCHEMA public TO qb_scram;
ALTER DEFAULT PRIVILEGES FOR ROLE qb_admin IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO qb_scram;
ALTER DEFAULT PRIVILEGES FOR ROLE qb_admin IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO qb_scram;
ALTER DEFAULT PRIVILEGES FOR ROLE qb_admin, qb_scram IN SCHEMA public
    GRANT SELECT ON TABLES TO qb_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE qb_admin, qb_scram IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO qb_reader;
"""


class PostgresCluster:
    """A PostgreSQL cluster in `basedir`, on 127.0.0.1:`port` and a unix socket in `basedir`.

    `tls_files` (certificate, key), PEM: serve TLS with them instead of the self-signed pair made
    in the data directory (tests of upstream certificate verification).
    """

    def __init__(
        self,
        basedir: Path | str,
        port: int | None = None,
        *,
        timeout: float = START_TIMEOUT,
        tls_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.basedir = Path(basedir).absolute()
        self.tls_files = tls_files
        self.datadir = self.basedir / "data"
        self.logfile = self.basedir / "postgres.log"
        self.host = HOST
        self.timeout = timeout
        self.reused = False  # start() adopted a server that was already running
        self._requested_port = port
        self._port: int | None = None
        self._socket_dir: Path | None = None
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"PostgresCluster({str(self.basedir)!r}, port={self._port})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalServerError(f"{self!r} is not started")
        return self._port

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise LocalServerError(f"{self!r} is not started")
        return self._socket_dir

    @property
    def version(self) -> str:
        """The server's `server_version`, e.g. `15.14 (Debian 15.14-0+deb12u1)`."""
        if self._version is None:
            raise LocalServerError(f"{self!r} is not started")
        return self._version

    def dsn(self, user: str, database: str = DATABASE) -> str:
        """A libpq URL for `user` over TCP, with its password from PG_PASSWORDS (if it has one)."""
        password = PG_PASSWORDS.get(user)
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(database, safe='')}"

    # -- lifecycle

    def start(self) -> Self:
        """Initialise if needed, start or adopt the server, create the logins; returns self."""
        find_pg_bindir()  # fail early and clearly when PostgreSQL is not installed
        self.basedir.mkdir(parents=True, exist_ok=True)
        self._prepare_basedir()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        hba_changed = self._write_hba()
        self.reused = self._adopt_running()
        if not self.reused:
            self._launch()
        try:
            if self.reused and hba_changed:
                self._psql("SELECT pg_reload_conf()", database="postgres")
            self._psql(_pg_provision_sql(), database="postgres")
            self._psql(_PG_QBTEST_SQL, database=DATABASE)
            self._version = self._psql("SHOW server_version", database="postgres").strip()
        except BaseException:
            if not self.reused:
                with contextlib.suppress(Exception):
                    self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server with `pg_ctl stop -m fast` if it runs; a no-op otherwise."""
        if self.is_running():
            argv = [self._pg("pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast", "-s"]
            result = self._run_as_owner([*argv, "-w", "-t", str(int(self.timeout))])
            if result.returncode != 0 and self.is_running():
                raise _failure(f"pg_ctl stop failed: {result.stdout.strip()}", self.logfile)
        self._port = self._socket_dir = self._version = None

    def is_running(self) -> bool:
        """Whether a postmaster runs from this data directory."""
        return self._running_pid() is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SQL

    def execute_sql(self, sql: str, database: str = DATABASE) -> str:
        """Run `sql` (statements and psql meta-commands) as qb_admin over the unix socket, stopping
        at the first error. Returns psql's unaligned tuples-only output: rows of `|`-separated
        values."""
        return self._psql(sql, database=database)

    def _psql(self, sql: str, *, database: str) -> str:
        psql = self._pg("psql") if (find_pg_bindir() / "psql").is_file() else "psql"
        argv = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        argv += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", PG_ADMIN, "-d", database]
        result = subprocess.run(
            argv, input=sql, capture_output=True, text=True, env=_clean_env(), check=False
        )
        if result.returncode != 0:
            raise LocalServerError(f"psql on database {database!r} failed:\n{result.stderr.strip()}")
        return result.stdout

    # -- internals

    def _pg(self, program: str) -> str:
        return str(find_pg_bindir() / program)

    def _tls_settings(self) -> dict[str, str]:
        """Serve TLS with a self-signed certificate in the data directory (made once), so clients
        and QueryBase's upstream side can be tested with `sslmode=require`."""
        cert, key = self.datadir / "server.crt", self.datadir / "server.key"
        if self.tls_files is not None:
            cert, key = self.datadir / "given.crt", self.datadir / "given.key"
            shutil.copyfile(self.tls_files[0], cert)
            shutil.copyfile(self.tls_files[1], key)
            key.chmod(0o600)  # PostgreSQL refuses a key others can read
            owner = self._owner()
            if owner is not None:
                for path in (cert, key):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
        elif not (cert.exists() and key.exists()):
            from proxy.tlsfiles import generate_self_signed

            generate_self_signed(cert, key)
            owner = self._owner()
            if owner is not None:
                for path in (cert, key):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
        return {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}

    def _owner(self) -> pwd.struct_passwd | None:
        """The account PostgreSQL runs as when we are root (it refuses root); None otherwise."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise LocalServerError(
                "running as root, but PostgreSQL refuses root and there is no 'postgres' user "
                "to run it as; install the postgresql package"
            ) from None

    def _run_as_owner(
        self, argv: Sequence[str], *, stdout: IO[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the data directory's owner; capture or redirect output."""
        owner = self._owner()
        as_owner: dict[str, Any] = {}
        if owner is not None:
            as_owner = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.basedir,
            env=_clean_env(owner.pw_dir if owner is not None else None),
            timeout=self.timeout + 10,
            check=False,
            **as_owner,
        )

    def _prepare_basedir(self) -> None:
        owner = self._owner()
        if owner is None:
            return
        os.chown(self.basedir, owner.pw_uid, owner.pw_gid)
        if not self.logfile.exists():
            self.logfile.touch()
            os.chown(self.logfile, owner.pw_uid, owner.pw_gid)
        probe = self._run_as_owner(["test", "-w", str(self.basedir), "-a", "-x", str(self.basedir)])
        if probe.returncode != 0:
            raise LocalServerError(
                f"running as root, PostgreSQL runs as 'postgres', which cannot reach "
                f"{self.basedir}: a parent directory is not searchable by it (pytest's "
                "/tmp/pytest-of-root is 0700); use a base directory under one such as /tmp"
            )

    def _initdb(self) -> None:
        with self.logfile.open("a") as log:
            log.write(f"--- initdb {self.datadir} ---\n")
            log.flush()
            argv = [self._pg("initdb"), "-D", str(self.datadir), "-U", PG_ADMIN, "--no-sync"]
            argv += ["--auth-local=trust", "--auth-host=scram-sha-256"]
            argv += ["--encoding=UTF8", "--locale=C.UTF-8"]
            result = self._run_as_owner(argv, stdout=log)
        if result.returncode != 0:
            raise _failure("initdb failed", self.logfile)

    def _write_hba(self) -> bool:
        hba = self.datadir / "pg_hba.conf"
        if hba.read_text() == _PG_HBA:
            return False
        hba.write_text(_PG_HBA)  # rewriting in place keeps the file's owner
        return True

    def _pidfile_lines(self) -> list[str]:
        try:
            return (self.datadir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return []

    def _running_pid(self) -> int | None:
        lines = self._pidfile_lines()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        return pid if _pid_alive(pid, "postgres") else None

    def _adopt_running(self) -> bool:
        """If a postmaster runs from our data directory, wait until it is ready and use it."""
        pid = self._running_pid()
        if pid is None:
            return False

        # postmaster.pid lines: pid, datadir, start time, port, socket dir, listen address,
        # shared memory key, status
        def ready() -> bool:
            lines = self._pidfile_lines()
            return len(lines) >= 8 and lines[7].strip() == "ready"

        _wait_until(
            ready,
            what=f"PostgreSQL already running in {self.datadir}",
            timeout=self.timeout,
            log=self.logfile,
            gone=lambda: not _pid_alive(pid, "postgres"),
        )
        lines = self._pidfile_lines()
        port = int(lines[3])
        if self._requested_port not in (None, port):
            raise LocalServerError(
                f"the server in {self.datadir} already runs on port {port}, "
                f"not {self._requested_port}; stop it first"
            )
        self._port, self._socket_dir = port, Path(lines[4].strip() or self.basedir)
        return True

    def _launch(self) -> None:
        """Start the postmaster with `pg_ctl start -w`; retry if a picked free port was taken."""
        # No postmaster runs from here (else we would have adopted it), so a pid file or socket
        # lock file is left by a crash. Removed, as the postmaster refuses to start when its pid
        # has since been reused by another process (likely after a container restart).
        for stale in [self.datadir / "postmaster.pid", *self.basedir.glob(".s.PGSQL.*")]:
            stale.unlink(missing_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            _check_socket_path(self.basedir / f".s.PGSQL.{port}")
            options = ["-p", str(port), "-k", str(self.basedir)]
            for name, value in {**_PG_SETTINGS, **self._tls_settings()}.items():
                options += ["-c", f"{name}={value}"]
            log_offset = _size(self.logfile)
            argv = [self._pg("pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.logfile)]
            argv += ["-w", "-t", str(int(self.timeout)), "-s", "-o", shlex.join(options)]
            result = self._run_as_owner(argv)
            if result.returncode == 0:
                self._port, self._socket_dir = port, self.basedir
                return
            taken = any(m in _read_from(self.logfile, log_offset) for m in _BIND_FAILURES)
            if not (taken and attempt < attempts):
                message = f"PostgreSQL did not start on port {port}: {result.stdout.strip()}"
                raise _failure(message, self.logfile)


# --------------------------------------------------------------------------------------------
# MariaDB


_MARIADBD_NAMES = ("mariadbd", "mysqld")


def _mariadbd_gone(pid: int) -> bool:
    return not _pid_alive(pid, *_MARIADBD_NAMES)


class _MariaDBPrograms(NamedTuple):
    server: Path
    install_db: Path
    client: Path
    admin: Path


@functools.cache
def _mariadb_programs() -> _MariaDBPrograms:
    return _MariaDBPrograms(
        server=_find_program(*_MARIADBD_NAMES),
        install_db=_find_program("mariadb-install-db", "mysql_install_db"),
        client=_find_program("mariadb", "mysql"),
        admin=_find_program("mariadb-admin", "mysqladmin"),
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _mariadb_provision_sql() -> str:
    """Accounts and the qbtest database; every statement is idempotent."""
    native, reader = (_sql_string(MARIADB_PASSWORDS[u]) for u in ("qb_native", "qb_reader"))
    # Built from this module's constants only, never from input. Root keeps only root@localhost
    # (the unix socket); install-db also makes root@127.0.0.1, root@::1 and root@<hostname>.
    return f"""
DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');
DELETE FROM mysql.proxies_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS {DATABASE};
CREATE USER IF NOT EXISTS 'qb_native'@'%';
ALTER USER 'qb_native'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD({native});
GRANT ALL PRIVILEGES ON {DATABASE}.* TO 'qb_native'@'%';
CREATE USER IF NOT EXISTS 'qb_reader'@'%';
ALTER USER 'qb_reader'@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD({reader});
GRANT SELECT ON {DATABASE}.* TO 'qb_reader'@'%';
"""


# Options for both mariadb-install-db and mariadbd. Debian's packaged config also sets utf8mb4.
_MARIADB_OPTIONS = (
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--skip-name-resolve",
)


class MariaDBServer:
    """A MariaDB server in `basedir`, on 127.0.0.1:`port` and a unix socket in `basedir`.

    `tls_files` (certificate, key), PEM: serve TLS with them (without, the server offers no TLS).
    """

    def __init__(
        self,
        basedir: Path | str,
        port: int | None = None,
        *,
        timeout: float = START_TIMEOUT,
        tls_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.basedir = Path(basedir).absolute()
        self.tls_files = tls_files
        self.datadir = self.basedir / "data"
        self.logfile = self.basedir / "mariadb.log"
        self.socket = self.basedir / "mariadb.sock"
        self.pidfile = self.basedir / "mariadbd.pid"
        self.host = HOST
        self.timeout = timeout
        self.reused = False  # start() adopted a server that was already running
        self._initialised = self.basedir / ".initialised"  # install-db does not clean up failures
        self._requested_port = port
        self._port: int | None = None
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"MariaDBServer({str(self.basedir)!r}, port={self._port})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalServerError(f"{self!r} is not started")
        return self._port

    @property
    def version(self) -> str:
        """The server's `VERSION()`, e.g. `10.11.6-MariaDB-0+deb12u1`."""
        if self._version is None:
            raise LocalServerError(f"{self!r} is not started")
        return self._version

    def connect_args(self, user: str) -> dict[str, Any]:
        """host, port, user and password for `pymysql.connect` / `aiomysql.connect` as `user`;
        add the database (`database=` for PyMySQL, `db=` for aiomysql)."""
        password = MARIADB_PASSWORDS.get(user, "")
        return {"host": self.host, "port": self.port, "user": user, "password": password}

    # -- lifecycle

    def start(self) -> Self:
        """Initialise if needed, start or adopt the server, create the accounts; returns self."""
        _mariadb_programs()  # fail early and clearly when MariaDB is not installed
        self.basedir.mkdir(parents=True, exist_ok=True)
        self.basedir.chmod(0o700)  # guards the root socket
        (self.basedir / "files").mkdir(exist_ok=True)
        _check_socket_path(self.socket)
        if not self._initialised.exists():
            self._install_db()
        self.reused = self._adopt_running()
        if not self.reused:
            self._launch()
        try:
            self._client(_mariadb_provision_sql(), database=None)
            self._version = self._client("SELECT VERSION()", database=None).strip()
        except BaseException:
            if not self.reused:
                with contextlib.suppress(Exception):
                    self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut the server down with SIGTERM (a clean shutdown) and wait until it has exited."""
        pid = self._running_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            _wait_until(
                functools.partial(_mariadbd_gone, pid),
                what=f"stopping mariadbd (pid {pid})",
                timeout=self.timeout,
                log=self.logfile,
            )
        self._port = self._version = None

    def is_running(self) -> bool:
        """Whether a mariadbd runs from this base directory's pid file."""
        return self._running_pid() is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- SQL

    def execute_sql(self, sql: str, database: str = DATABASE) -> str:
        """Run `sql` (one or more statements) as root over the unix socket with the `mariadb`
        client, stopping at the first error. Returns its batch output: tab-separated rows."""
        return self._client(sql, database=database)

    def _client(self, sql: str, *, database: str | None) -> str:
        argv = [str(_mariadb_programs().client), "--no-defaults", f"--socket={self.socket}"]
        argv += [f"--user={MARIADB_ROOT}", "--batch", "--skip-column-names"]
        if database is not None:
            argv.append(f"--database={database}")
        result = subprocess.run(
            argv, input=sql, capture_output=True, text=True, env=_clean_env(), check=False
        )
        if result.returncode != 0:
            where = f"database {database!r}" if database else "the server"
            raise LocalServerError(f"mariadb client on {where} failed:\n{result.stderr.strip()}")
        return result.stdout

    # -- internals

    def _tmpdir_option(self) -> list[str]:
        # A private tmpdir: servers of other processes (another checkout, another pid namespace)
        # may pick the same `#sql-temptable-<pid>-…` names in a shared /tmp and remove each
        # other's, which fails mariadb-install-db ("Unknown table 'mysql.tmp_user_sys'").
        tmpdir = self.basedir / "tmp"
        tmpdir.mkdir(exist_ok=True)
        return [f"--tmpdir={tmpdir}"]

    def _user_option(self) -> list[str]:
        # mariadbd refuses root unless told so explicitly; as root it needs no chown of basedir.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install_db(self) -> None:
        if self.datadir.exists():
            shutil.rmtree(self.datadir)  # left by an install-db that did not finish
        argv = [str(_mariadb_programs().install_db), "--no-defaults", f"--datadir={self.datadir}"]
        argv += ["--auth-root-authentication-method=normal", "--skip-test-db"]
        argv += [*_MARIADB_OPTIONS, *self._tmpdir_option(), *self._user_option()]
        with self.logfile.open("a") as log:
            log.write(f"--- mariadb-install-db {self.datadir} ---\n")
            log.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.basedir,
                env=_clean_env(),
                timeout=self.timeout,
                check=False,
            )
        if result.returncode != 0:
            raise _failure("mariadb-install-db failed", self.logfile)
        self._initialised.touch()

    def _running_pid(self) -> int | None:
        try:
            text = self.pidfile.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            return None
        return int(text) if _pid_alive(int(text), *_MARIADBD_NAMES) else None

    def _answers_ping(self) -> bool:
        if not self.socket.exists():
            return False
        argv = [str(_mariadb_programs().admin), "--no-defaults", f"--socket={self.socket}"]
        argv += [f"--user={MARIADB_ROOT}", "--connect-timeout=2", "ping"]
        ping = subprocess.run(argv, capture_output=True, env=_clean_env(), timeout=10, check=False)
        return ping.returncode == 0

    def _adopt_running(self) -> bool:
        """If a mariadbd runs from our pid file, wait until it answers and use it."""
        pid = self._running_pid()
        if pid is None:
            return False
        _wait_until(
            self._answers_ping,
            what=f"MariaDB already running in {self.basedir}",
            timeout=self.timeout,
            log=self.logfile,
            gone=functools.partial(_mariadbd_gone, pid),
        )
        port = int(self._client("SELECT @@port", database=None).strip())
        if self._requested_port not in (None, port):
            raise LocalServerError(
                f"the server in {self.basedir} already runs on port {port}, "
                f"not {self._requested_port}; stop it first"
            )
        self._port = port
        return True

    def _launch(self) -> None:
        """Start a detached mariadbd and wait until it answers; retry a taken free port."""
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or free_port()
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()  # left by a crash
            argv = [str(_mariadb_programs().server), "--no-defaults", f"--datadir={self.datadir}"]
            argv += [f"--port={port}", f"--bind-address={HOST}", f"--socket={self.socket}"]
            argv += [f"--pid-file={self.pidfile}", f"--log-error={self.logfile}"]
            argv += [f"--secure-file-priv={self.basedir / 'files'}"]
            if self.tls_files is not None:
                argv += [f"--ssl-cert={self.tls_files[0]}", f"--ssl-key={self.tls_files[1]}"]
            argv += [*_MARIADB_OPTIONS, *self._tmpdir_option(), *self._user_option()]
            log_offset = _size(self.logfile)
            pid = self._spawn_detached(argv)
            try:
                _wait_until(
                    self._answers_ping,
                    what=f"MariaDB on port {port}",
                    timeout=self.timeout,
                    log=self.logfile,
                    gone=functools.partial(_mariadbd_gone, pid),
                )
            except LocalServerError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while not _mariadbd_gone(pid) and time.monotonic() < deadline:
                    time.sleep(POLL_INTERVAL)
                taken = any(m in _read_from(self.logfile, log_offset) for m in _BIND_FAILURES)
                if taken and attempt < attempts:
                    continue
                raise
            self._port = port
            return

    def _spawn_detached(self, argv: Sequence[str]) -> int:
        """Start `argv` as a grandchild in a new session, as pg_ctl does for the postmaster: it is
        not our child, so it may outlive this process (a demo script) without being reaped or
        warned about, and a terminal's Ctrl-C does not reach it. Returns its pid."""
        launcher = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
        result = subprocess.run(
            ["/bin/sh", "-c", launcher, "sh", str(self.logfile), *argv],
            capture_output=True,
            text=True,
            cwd=self.basedir,
            env=_clean_env(),
            start_new_session=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0 or not result.stdout.strip().isdigit():
            raise LocalServerError(f"could not launch mariadbd: {result.stderr.strip()}")
        return int(result.stdout.strip())
