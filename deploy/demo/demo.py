"""The QueryBase demo: a local PostgreSQL and MariaDB with a sample shop, fronted by QueryBase.

`make demo` runs this as `.venv/bin/python deploy/demo/demo.py`. Every step is idempotent, so
running it again reuses what the last run left behind:

1. start (or adopt, if already running) a PostgreSQL cluster in `.demo/pg` and a MariaDB server
   in `.demo/mariadb` (tests/support/localdb.py) on fixed, unusual ports, and load the shop data
   (deploy/demo/shop_*.sql; reloading resets it);
2. write `.demo/querybase.toml` if it is missing and run `querybase init`;
3. create the demo users, groups, sources and grants that are not there yet, through the
   `querybase` command line exactly as a person would (passwords through the environment);
4. check that QueryBase can log in to both sources (`querybase source test`);
5. print what to try, then run `querybase serve` in the foreground (not with `--setup-only`).

`--down` stops the demo databases; `rm -rf .demo` removes everything. The passwords here are
demo passwords, printed on purpose: never reuse them anywhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from proxy.config import ListenAddress, Settings, load_settings, parse_listen  # noqa: E402
from proxy.errors import ConfigError  # noqa: E402
from tests.support.localdb import (  # noqa: E402
    DATABASE,
    MARIADB_PASSWORDS,
    PG_PASSWORDS,
    LocalServerError,
    MariaDBServer,
    PostgresCluster,
)

DEFAULT_DIR = REPO_ROOT / ".demo"
DEFAULT_PG_PORT = 25432
DEFAULT_MYSQL_PORT = 23306
DEFAULT_LISTEN = {
    "postgres": "127.0.0.1:15432",
    "mysql": "127.0.0.1:13306",
    "admin": "127.0.0.1:18080",
}
SHOP_SQL = {
    "postgresql": REPO_ROOT / "deploy/demo/shop_postgres.sql",
    "mysql": REPO_ROOT / "deploy/demo/shop_mysql.sql",
}

ADMIN_PASSWORD = "admin-demo-pw"  # noqa: S105 - a documented demo password
PASSWORD_ENV = "QB_DEMO_PASSWORD"  # noqa: S105 - variable names
WRITE_PASSWORD_ENV = "QB_DEMO_WRITE_PASSWORD"  # noqa: S105


@dataclass(frozen=True)
class DemoUser:
    name: str
    password: str
    group: str
    level: str  # granted to `group` on every demo source


USERS = (
    DemoUser("alice", "alice-demo-pw", "analysts", "propose"),
    DemoUser("bob", "bob-demo-pw", "approvers", "approve"),
    DemoUser("carol", "carol-demo-pw", "readers", "read"),
)
BOB_PASSWORD = next(u.password for u in USERS if u.name == "bob")
LEVEL_MEANING = {
    "propose": "reads run, writes are held for approval",
    "approve": "reviews held writes",
    "read": "reads only, writes denied",
}


@dataclass(frozen=True)
class DemoSource:
    name: str
    engine: str
    port: int
    read_user: str
    read_password: str
    write_user: str
    write_password: str
    tls: str

    def add_args(self) -> tuple[str, ...]:
        """`querybase source add` arguments; the passwords travel in the environment."""
        return (
            *("source", "add", self.name, "--engine", self.engine),
            *("--host", "127.0.0.1", "--port", str(self.port), "--database", DATABASE),
            *("--user", self.read_user, "--password-env", PASSWORD_ENV),
            *("--write-user", self.write_user, "--write-password-env", WRITE_PASSWORD_ENV),
            *("--tls", self.tls),
        )

    def differs_from(self, listed: Mapping[str, Any]) -> bool:
        wanted = {
            "engine": self.engine,
            "host": "127.0.0.1",
            "port": self.port,
            "database": DATABASE,
            "read_user": self.read_user,
            "write_user": self.write_user,
            "tls": self.tls,
        }
        return any(listed.get(key) != value for key, value in wanted.items())


def demo_sources(pg_port: int, mysql_port: int) -> tuple[DemoSource, ...]:
    return (
        DemoSource(
            "shop_pg",
            "postgresql",
            pg_port,
            "qb_reader",
            PG_PASSWORDS["qb_reader"],
            "qb_scram",
            PG_PASSWORDS["qb_scram"],
            "prefer",
        ),
        DemoSource(
            "shop_mysql",
            "mysql",
            mysql_port,
            "qb_reader",
            MARIADB_PASSWORDS["qb_reader"],
            "qb_native",
            MARIADB_PASSWORDS["qb_native"],
            "disable",
        ),
    )


class DemoError(Exception):
    """A step failed; the message says which and what to do."""


# ------------------------------------------------------------------------------ the querybase CLI


def querybase_command() -> list[str]:
    """The `querybase` console script next to this Python, else `python -m proxy.cli`."""
    script = Path(sys.executable).parent / "querybase"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "proxy.cli"]


class QueryBaseCLI:
    """Runs `querybase --config CONFIG ...` as a subprocess, as a person at a terminal would."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def argv(self, *args: str) -> list[str]:
        return [*querybase_command(), "--config", str(self.config), *args]

    def run(self, *args: str, secrets: Mapping[str, str] | None = None) -> str:
        """Run a command, echo its output indented, and raise DemoError if it fails."""
        env = {**os.environ, **(secrets or {})}
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
        )
        for line in result.stdout.splitlines():
            print(f"  {line}")
        if result.returncode != 0:
            raise DemoError(
                f"`querybase {' '.join(args)}` failed (exit {result.returncode}):\n{result.stderr.strip()}"
            )
        return result.stdout

    def list_json(self, *args: str) -> list[dict[str, Any]]:
        """A `... list --json` command's rows, without echoing them."""
        result = subprocess.run(
            self.argv(*args, "--json"), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if result.returncode != 0:
            raise DemoError(f"`querybase {' '.join(args)} --json` failed:\n{result.stderr.strip()}")
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows


# ------------------------------------------------------------------------------------- steps


def start_databases(demo_dir: Path, pg_port: int, mysql_port: int) -> tuple[PostgresCluster, MariaDBServer]:
    """Start or adopt both demo servers and (re)load the shop data into each."""
    print("Demo databases:")
    pg = PostgresCluster(demo_dir / "pg", pg_port).start()
    state = "already running" if pg.reused else "started"
    print(f"  PostgreSQL {pg.version} {state} on {pg.host}:{pg.port} ({shown(pg.basedir)})")
    mariadb = MariaDBServer(demo_dir / "mariadb", mysql_port).start()
    state = "already running" if mariadb.reused else "started"
    print(f"  MariaDB {mariadb.version} {state} on {mariadb.host}:{mariadb.port} ({shown(mariadb.basedir)})")
    pg.execute_sql(SHOP_SQL["postgresql"].read_text(encoding="utf-8"))
    mariadb.execute_sql(SHOP_SQL["mysql"].read_text(encoding="utf-8"))
    print(f"  shop data (re)loaded into database {DATABASE} on both")
    return pg, mariadb


def config_text(listen: Mapping[str, str]) -> str:
    return (
        "# QueryBase demo configuration, written by deploy/demo/demo.py; kept on later runs\n"
        "# (delete it to have it written again). Everything not set here takes its default,\n"
        "# relative to this directory: store querybase.db, key querybase.key, TLS files in tls/.\n"
        f'\n[postgres]\nlisten = "{listen["postgres"]}"\n'
        f'\n[mysql]\nlisten = "{listen["mysql"]}"\n'
        f'\n[admin]\nlisten = "{listen["admin"]}"\n'
        '\n[log]\nformat = "console"\n'
    )


def init_querybase(cli: QueryBaseCLI, listen: Mapping[str, str]) -> None:
    """Write the config file if it is missing, then `querybase init` (idempotent itself)."""
    print("QueryBase:")
    if cli.config.exists():
        print(f"  config {shown(cli.config)} exists, kept")
    else:
        cli.config.parent.mkdir(parents=True, exist_ok=True)
        cli.config.write_text(config_text(listen), encoding="utf-8")
        print(f"  config {shown(cli.config)} written")
    cli.run("init", secrets={"QUERYBASE_ADMIN_PASSWORD": ADMIN_PASSWORD})


@dataclass(frozen=True)
class Command:
    """One `querybase` command to run, with the secrets it reads from the environment."""

    args: tuple[str, ...]
    secrets: Mapping[str, str] = field(default_factory=dict)


def plan_users_and_groups(cli: QueryBaseCLI) -> list[Command]:
    users = {row["name"] for row in cli.list_json("user", "list")}
    groups = {row["name"]: set(row["members"]) for row in cli.list_json("group", "list")}
    plan = []
    for user in USERS:
        if user.name not in users:
            args = ("user", "add", user.name, "--password-env", PASSWORD_ENV)
            plan.append(Command(args, {PASSWORD_ENV: user.password}))
        if user.group not in groups:
            plan.append(Command(("group", "add", user.group)))
        if user.name not in groups.get(user.group, set()):
            plan.append(Command(("group", "member", "add", user.group, user.name)))
    return plan


def plan_sources(cli: QueryBaseCLI, sources: Sequence[DemoSource]) -> list[Command]:
    """Add missing sources; replace one that points elsewhere (e.g. after --pg-port changed)."""
    listed = {row["name"]: row for row in cli.list_json("source", "list")}
    plan = []
    for source in sources:
        if source.name in listed and source.differs_from(listed[source.name]):
            plan.append(Command(("source", "remove", source.name)))
            del listed[source.name]
        if source.name not in listed:
            secrets = {PASSWORD_ENV: source.read_password, WRITE_PASSWORD_ENV: source.write_password}
            plan.append(Command(source.add_args(), secrets))
    return plan


def plan_grants(cli: QueryBaseCLI, sources: Sequence[DemoSource]) -> list[Command]:
    granted = {(row["group"], row["source"], row["level"]) for row in cli.list_json("grant", "list")}
    return [
        Command(("grant", user.group, source.name, user.level))
        for source in sources
        for user in USERS
        if (user.group, source.name, user.level) not in granted
    ]


def run_all(cli: QueryBaseCLI, plan: Sequence[Command]) -> int:
    for command in plan:
        cli.run(*command.args, secrets=command.secrets)
    return len(plan)


def provision_catalog(cli: QueryBaseCLI, sources: Sequence[DemoSource]) -> None:
    """Create the demo users, groups, sources and grants that are missing; keep the rest."""
    print("Demo catalog:")
    done = run_all(cli, plan_users_and_groups(cli))
    done += run_all(cli, plan_sources(cli, sources))
    done += run_all(cli, plan_grants(cli, sources))  # planned after sources: removing one drops its grants
    if not done:
        print("  users, groups, sources and grants all present, kept")


def check_sources(cli: QueryBaseCLI, sources: Sequence[DemoSource]) -> None:
    print("Checking that QueryBase can log in to both sources:")
    for source in sources:
        cli.run("source", "test", source.name)


def effective_settings(config: Path, requested: Mapping[str, str | None]) -> Settings:
    """The settings `serve` will use; warn when an explicit --listen-* option is not what they say."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise DemoError(f"{exc.message}") from None
    for key, value in requested.items():
        actual: ListenAddress | None = getattr(settings, key).listen
        if value is not None and str(actual) != value:
            print(
                f"warning: --listen-{key} {value} ignored: {shown(config)} says {key}.listen = "
                f'"{actual or ""}" (delete the file, or edit it, to change it)'
            )
    return settings


# ----------------------------------------------------------------------------------- output


def shown(path: Path) -> str:
    """`path` as a person would type it from the current directory."""
    try:
        text = str(path.relative_to(Path.cwd()))
    except ValueError:
        text = str(path)
    return shlex.quote(text)


def demo_command(demo_dir: Path) -> str:
    """How to run this script again for `demo_dir`, from the current directory."""
    command = f"{shown(Path(sys.executable))} {shown(Path(__file__).resolve())}"
    return command if demo_dir == DEFAULT_DIR else f"{command} --dir {shown(demo_dir)}"


def instructions(settings: Settings, demo_dir: Path, sources: Sequence[DemoSource]) -> str:
    command = querybase_command()
    qb = shown(Path(command[0])) + "".join(f" {arg}" for arg in command[1:])
    qb += f" --config {shown(settings.config_path)}"
    demo = demo_command(demo_dir)
    pg, mysql, admin = settings.postgres.listen, settings.mysql.listen, settings.admin.listen
    names = ", ".join(s.name for s in sources)
    width = max(len(u.name) for u in USERS) + 1
    lines = [
        "",
        "=" * 78,
        "QueryBase demo: try this",
        "=" * 78,
        "Users (demo passwords, printed on purpose; never reuse them):",
        f"  {'admin':<{width}} {ADMIN_PASSWORD:<15} admin: manages users, sources and grants",
        *(
            f"  {u.name:<{width}} {u.password:<15} group {u.group:<10} {u.level} on {names} "
            f"({LEVEL_MEANING[u.level]})"
            for u in USERS
        ),
        "",
        "Connect as a client would (other users: change user=/-u):",
    ]
    if pg is not None:
        lines.append(f'  psql "host={pg.host} port={pg.port} dbname=shop_pg user=alice"')
    if mysql is not None:
        lines.append(f"  mariadb -h {mysql.host} -P {mysql.port} -u alice -p shop_mysql")
    lines += [
        "",
        "  Try as alice: SELECT * FROM customers LIMIT 5;  then  UPDATE products SET price = 0;",
        "  The UPDATE is held for approval (PostgreSQL: SQLSTATE QB001; MySQL: ERROR 9001) as",
        "  change request #N. As carol it is denied (PostgreSQL 42501; MySQL 1142).",
        "",
        "Review it as bob (then it runs once, on the source's write login):",
        f"  QUERYBASE_PASSWORD={BOB_PASSWORD} {qb} requests list --as bob",
        f"  QUERYBASE_PASSWORD={BOB_PASSWORD} {qb} requests approve N --as bob",
        "",
    ]
    if admin is not None:
        host = f"[{admin.host}]" if ":" in admin.host else admin.host
        url = f"http://{host}:{admin.port}"
        lines += [
            f"Admin API: {url}  (OpenAPI page {url}/docs; POST /api/v1/auth/token for a token;",
            f"  Prometheus metrics at {url}/metrics)",
            "",
        ]
    lines += [
        "Catalog from a terminal:",
        f"  {qb} grant list",
        f"  {qb} source test shop_pg",
        "",
        "Stop QueryBase: Ctrl-C (the demo databases keep running for the next run).",
        f"Stop the demo databases: {demo} --down",
        f"Remove the demo entirely: {demo} --down && rm -rf {shown(demo_dir)}",
        "=" * 78,
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main


def _listen(value: str) -> str:
    try:
        address = parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if address is None:
        raise argparse.ArgumentTypeError("the demo needs an address HOST:PORT")
    return str(address)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Set up and run the QueryBase demo (local PostgreSQL + MariaDB with a sample shop)."
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="demo directory (default: .demo/)")
    parser.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="demo PostgreSQL port")
    parser.add_argument("--mysql-port", type=int, default=DEFAULT_MYSQL_PORT, help="demo MariaDB port")
    for key, default in DEFAULT_LISTEN.items():
        parser.add_argument(
            f"--listen-{key}",
            type=_listen,
            metavar="HOST:PORT",
            help=f"QueryBase {key} listener when the config is written (default {default})",
        )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--setup-only", action="store_true", help="set up and print, but do not serve")
    mode.add_argument("--down", action="store_true", help="stop the demo databases and exit")
    return parser


def down(demo_dir: Path) -> None:
    for server in (PostgresCluster(demo_dir / "pg"), MariaDBServer(demo_dir / "mariadb")):
        name = "PostgreSQL" if isinstance(server, PostgresCluster) else "MariaDB"
        if server.is_running():
            server.stop()
            print(f"{name} in {shown(server.basedir)} stopped")
        else:
            print(f"{name} in {shown(server.basedir)} is not running")
    print(f"The data stays in {shown(demo_dir)}; `rm -rf {shown(demo_dir)}` removes it.")


def set_up(args: argparse.Namespace) -> Settings:
    demo_dir: Path = args.dir
    pg, mariadb = start_databases(demo_dir, args.pg_port, args.mysql_port)
    requested = {key: getattr(args, f"listen_{key}") for key in DEFAULT_LISTEN}
    cli = QueryBaseCLI(demo_dir / "querybase.toml")
    init_querybase(cli, {key: value or DEFAULT_LISTEN[key] for key, value in requested.items()})
    settings = effective_settings(cli.config, requested)
    sources = demo_sources(pg.port, mariadb.port)
    provision_catalog(cli, sources)
    check_sources(cli, sources)
    print(instructions(settings, demo_dir, sources))
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.dir = args.dir.expanduser().absolute()
    try:
        if args.down:
            down(args.dir)
            return 0
        settings = set_up(args)
    except (DemoError, LocalServerError) as exc:
        sys.stdout.flush()
        print(f"demo: error: {exc}", file=sys.stderr)
        if isinstance(exc, LocalServerError):
            print(f"hint: `{demo_command(args.dir)} --down` stops the demo databases", file=sys.stderr)
        return 1
    if args.setup_only:
        return 0
    serve = [*querybase_command(), "--config", str(settings.config_path), "serve"]
    print(f"\nStarting: {shlex.join(serve)}\n", flush=True)
    sys.stderr.flush()
    os.execv(serve[0], serve)  # noqa: S606 - replaces this process with the server, by design


if __name__ == "__main__":
    sys.exit(main())
