"""The `querybase` command line: init, serve, and catalog management for people at a terminal.

Every command takes `--config`; list commands take `--json`; passwords come from
`--password-stdin`, `--password-env VAR` or an interactive prompt, never from argv. Errors print
one line `querybase: error: …` on stderr and exit 1 (usage errors exit 2, from argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from policies.types import Level
from proxy.config import DEFAULT_CONFIG_TEXT, Settings, load_settings, resolve_config_path
from proxy.errors import InvalidInput, QueryBaseError, StoreError
from proxy.store.catalog import PG_AUTH_METHODS, Catalog, SourceSpec
from proxy.store.crypto import SecretBox, create_key_file, load_key
from proxy.store.db import Store
from proxy.store.models import Engine, UpstreamTLS

ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "QUERYBASE_ADMIN_PASSWORD"  # noqa: S105 - a variable name
DEFAULT_PORTS = {Engine.POSTGRESQL: 5432, Engine.MYSQL: 3306}

Handler = Callable[["Context", argparse.Namespace], Awaitable[int]]


class Context:
    """What a command needs: settings, the store, streams and the environment."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], out: TextIO, err: TextIO) -> None:
        self.settings = settings
        self.environ = environ
        self.out = out
        self.err = err
        self.store = Store(settings.store.url)
        self.actor = f"cli:{_os_user()}"

    def catalog(self, *, with_key: bool = False) -> Catalog:
        box = SecretBox(load_key(self.settings, self.environ)) if with_key else None
        return Catalog(self.store, box)

    async def require_current_schema(self) -> None:
        current, head = await self.store.current_revision(), Store.head_revision()
        if current is None:
            raise StoreError(
                f"store {self.store.safe_url} is not initialised: run `querybase init` "
                f"(config {self.settings.config_path})"
            )
        if current != head:
            raise StoreError(
                f"store schema is at revision {current}, this QueryBase needs {head}: "
                "run `querybase serve` or `querybase init` to migrate"
            )

    def print(self, text: str = "") -> None:
        print(text, file=self.out)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


# ---------------------------------------------------------------------------------- output


def print_table(ctx: Context, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    ctx.print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        ctx.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def print_json(ctx: Context, data: Any) -> None:
    ctx.print(json.dumps(data, indent=2, sort_keys=True))


# ------------------------------------------------------------------------------- passwords


def read_password(
    args: argparse.Namespace, environ: Mapping[str, str], *, prompt: str, confirm: bool = True
) -> str:
    """From --password-env VAR, --password-stdin, or an interactive prompt (in that order)."""
    if getattr(args, "password_env", None):
        return _password_from_env(args.password_env, environ)
    if getattr(args, "password_stdin", False):
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    return _prompt_password(prompt, confirm=confirm)


def _password_from_env(var: str, environ: Mapping[str, str]) -> str:
    value = environ.get(var)
    if value is None:
        raise InvalidInput(f"--password-env: environment variable {var} is not set")
    return value


def _prompt_password(prompt: str, *, confirm: bool) -> str:
    if not sys.stdin.isatty():
        raise InvalidInput(
            "no password given: use --password-stdin or --password-env VAR (stdin is not a terminal)"
        )
    first = getpass.getpass(f"{prompt}: ")
    if confirm and getpass.getpass(f"{prompt} (again): ") != first:
        raise InvalidInput("the passwords do not match")
    return first


# ---------------------------------------------------------------------------------- init/serve


def write_default_config(path: Path) -> bool:
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
    return True


async def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    from proxy.tlsfiles import generate_self_signed

    settings = ctx.settings
    if ctx.environ.get("QUERYBASE_SECRET_KEY"):
        ctx.print("secret key: from QUERYBASE_SECRET_KEY")
    elif create_key_file(settings.secrets.key_file):
        ctx.print(f"secret key: created {settings.secrets.key_file} (mode 0600; back it up)")
    else:
        ctx.print(f"secret key: {settings.secrets.key_file} exists, kept")
    load_key(settings, ctx.environ)
    cert, key = settings.tls.cert_file, settings.tls.key_file
    if cert.exists() and key.exists():
        ctx.print(f"TLS certificate: {cert} exists, kept")
    else:
        generate_self_signed(cert, key)
        ctx.print(f"TLS certificate: created self-signed {cert}")
    await ctx.store.migrate()
    ctx.print(f"store: {ctx.store.safe_url} at revision {Store.head_revision()}")
    catalog = ctx.catalog()
    if await catalog.user_exists(ADMIN_USER):
        ctx.print(f"admin user: {ADMIN_USER!r} exists, unchanged")
        return 0
    password = ctx.environ.get(ADMIN_PASSWORD_ENV)
    generated = False
    if not password:
        if sys.stdin.isatty():
            password = _prompt_password(f"password for {ADMIN_USER!r}", confirm=True)
        else:
            password, generated = secrets.token_urlsafe(18), True
    await catalog.add_user(ADMIN_USER, password, admin=True, actor=ctx.actor)
    if generated:
        ctx.print(f"admin user: created {ADMIN_USER!r} with password {password}  (shown only once)")
    else:
        ctx.print(f"admin user: created {ADMIN_USER!r}")
    return 0


async def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from proxy.logging import configure
    from proxy.server import serve

    configure(ctx.settings.log)
    await ctx.store.close()  # serve owns its own store
    return await serve(ctx.settings)


# ------------------------------------------------------------------------------------- users


async def cmd_user_add(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    password = read_password(args, ctx.environ, prompt=f"password for {args.name!r}")
    await ctx.catalog().add_user(args.name, password, admin=args.admin, pg_auth=args.pg_auth, actor=ctx.actor)
    ctx.print(f"user {args.name!r} created" + (" (admin)" if args.admin else ""))
    return 0


async def cmd_user_list(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    users = await ctx.catalog().list_users()
    if args.json:
        print_json(ctx, [asdict(u) for u in users])
    else:
        print_table(
            ctx,
            ["name", "admin", "active", "groups", "pg_auth", "created"],
            [(u.name, u.admin, u.active, u.groups, u.pg_auth, u.created_at) for u in users],
        )
    return 0


async def cmd_user_passwd(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    password = read_password(args, ctx.environ, prompt=f"new password for {args.name!r}")
    await ctx.catalog().set_password(args.name, password, pg_auth=args.pg_auth, actor=ctx.actor)
    ctx.print(f"password of {args.name!r} changed")
    return 0


async def cmd_user_disable(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().set_active(args.name, False, actor=ctx.actor)
    ctx.print(f"user {args.name!r} disabled")
    return 0


async def cmd_user_enable(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().set_active(args.name, True, actor=ctx.actor)
    ctx.print(f"user {args.name!r} enabled")
    return 0


# ------------------------------------------------------------------------------------ groups


async def cmd_group_add(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().add_group(args.name, actor=ctx.actor)
    ctx.print(f"group {args.name!r} created")
    return 0


async def cmd_group_list(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    groups = await ctx.catalog().list_groups()
    if args.json:
        print_json(ctx, [asdict(g) for g in groups])
    else:
        print_table(ctx, ["name", "members"], [(g.name, g.members) for g in groups])
    return 0


async def cmd_member_add(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().add_member(args.group, args.user, actor=ctx.actor)
    ctx.print(f"user {args.user!r} added to group {args.group!r}")
    return 0


async def cmd_member_remove(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().remove_member(args.group, args.user, actor=ctx.actor)
    ctx.print(f"user {args.user!r} removed from group {args.group!r}")
    return 0


# ----------------------------------------------------------------------------------- sources


async def cmd_source_add(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    engine = Engine(args.engine)
    read_pw: str | None = None
    if not args.no_password:
        read_pw = read_password(
            args, ctx.environ, prompt=f"password of upstream login {args.user!r}", confirm=False
        )
    write_pw: str | None = None
    if args.write_user:
        if args.write_password_env:
            write_pw = _password_from_env(args.write_password_env, ctx.environ)
        else:
            write_pw = _prompt_password(f"password of upstream write login {args.write_user!r}", confirm=True)
    elif args.write_password_env:
        raise InvalidInput("--write-password-env needs --write-user")
    spec = SourceSpec(
        name=args.name,
        engine=engine,
        host=args.host,
        port=args.port or DEFAULT_PORTS[engine],
        database=args.database,
        read_user=args.user,
        write_user=args.write_user,
        tls=UpstreamTLS(args.tls),
        pool_size=args.pool_size,
        pool_timeout_seconds=args.pool_timeout,
    )
    catalog = ctx.catalog(with_key=True)
    await catalog.add_source(spec, read_password=read_pw, write_password=write_pw, actor=ctx.actor)
    ctx.print(f"source {args.name!r} added ({engine.value} {spec.host}:{spec.port}/{spec.database})")
    return 0


async def cmd_source_list(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    sources = await ctx.catalog().list_sources()
    if args.json:
        print_json(ctx, [s.as_dict() for s in sources])
    else:
        print_table(
            ctx,
            [
                "name",
                "engine",
                "host",
                "port",
                "database",
                "read_user",
                "write_user",
                "tls",
                "pool",
            ],
            [
                (
                    s.name,
                    s.engine,
                    s.host,
                    s.port,
                    s.database,
                    s.read_user,
                    s.write_user,
                    s.tls,
                    s.pool_size,
                )
                for s in sources
            ],
        )
    return 0


async def cmd_source_show(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    source = await ctx.catalog().get_source(args.name)
    data = source.as_dict()
    if args.json:
        print_json(ctx, data)
        return 0
    for key, value in data.items():
        if key == "grants":
            continue
        ctx.print(f"{key + ':':<24}{_cell(value)}")
    grants = ", ".join(f"{g['group']}={g['level']}" for g in data["grants"]) or "-"
    ctx.print(f"{'grants:':<24}{grants}")
    return 0


async def cmd_source_test(ctx: Context, args: argparse.Namespace) -> int:
    from proxy.sourcecheck import test_logins

    await ctx.require_current_schema()
    creds = await ctx.catalog(with_key=True).source_credentials(args.name)
    results = await test_logins(creds)
    if args.json:
        print_json(ctx, [asdict(r) for r in results])
    else:
        for r in results:
            status = "ok" if r.ok else "FAILED"
            ctx.print(f"{args.name} {r.role} login {r.user!r}: {status}: {r.detail}")
    return 0 if all(r.ok for r in results) else 1


async def cmd_source_remove(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().remove_source(args.name, actor=ctx.actor)
    ctx.print(f"source {args.name!r} removed")
    return 0


# ------------------------------------------------------------------------------------ grants


async def cmd_grant(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().grant(args.group, args.source, Level(args.level), actor=ctx.actor)
    ctx.print(f"granted {args.level} on {args.source!r} to group {args.group!r}")
    return 0


async def cmd_revoke(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().revoke(args.group, args.source, Level(args.level), actor=ctx.actor)
    ctx.print(f"revoked {args.level} on {args.source!r} from group {args.group!r}")
    return 0


async def cmd_grant_list(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    grants = await ctx.catalog().list_grants()
    if args.json:
        print_json(ctx, [asdict(g) for g in grants])
    else:
        print_table(ctx, ["group", "source", "level"], [(g.group, g.source, g.level) for g in grants])
    return 0


# ------------------------------------------------------------------------------------- audit


async def cmd_audit_verify(ctx: Context, args: argparse.Namespace) -> int:
    from proxy import audit

    await ctx.require_current_schema()
    async with ctx.store.session() as session:
        result = await audit.verify(session)
    if args.json:
        print_json(ctx, asdict(result))
    else:
        ctx.print(result.describe())
    return 0 if result.ok else 1


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="configuration file (default: $QUERYBASE_CONFIG, else ./querybase.toml)",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")
    password = argparse.ArgumentParser(add_help=False)
    source_of = password.add_mutually_exclusive_group()
    source_of.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    source_of.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")

    parser = argparse.ArgumentParser(prog="querybase", description="QueryBase SQL gateway", parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        parent: Any, name: str, handler: Handler, help_text: str, parents: Sequence[Any] = ()
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str, parent: Any = commands) -> Any:
        sub = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    add(commands, "init", cmd_init, "create config, key, TLS certificate, store and the admin user")
    add(commands, "serve", cmd_serve, "run the listeners until SIGINT/SIGTERM")

    users = group("user", "manage QueryBase user accounts")
    add(users, "add", cmd_user_add, "create a user", [password]).add_argument("name")
    users.choices["add"].add_argument("--admin", action="store_true", help="may manage the catalog")
    pg_auth_help = (
        "PostgreSQL login method: scram (default), md5 (stores an md5 verifier), "
        "password (cleartext, accepted only over TLS)"
    )
    users.choices["add"].add_argument(
        "--pg-auth", choices=PG_AUTH_METHODS, default="scram", help=pg_auth_help
    )
    add(users, "list", cmd_user_list, "list users", [as_json])
    add(users, "passwd", cmd_user_passwd, "set a user's password", [password]).add_argument("name")
    users.choices["passwd"].add_argument(
        "--pg-auth", choices=PG_AUTH_METHODS, help=pg_auth_help + "; default: keep"
    )
    add(users, "disable", cmd_user_disable, "stop a user from logging in").add_argument("name")
    add(users, "enable", cmd_user_enable, "let a disabled user log in again").add_argument("name")

    groups = group("group", "manage groups and their members")
    add(groups, "add", cmd_group_add, "create a group").add_argument("name")
    add(groups, "list", cmd_group_list, "list groups with their members", [as_json])
    members = group("member", "add or remove group members", groups)
    for verb, handler in (("add", cmd_member_add), ("remove", cmd_member_remove)):
        sub = add(members, verb, handler, f"{verb} a member")
        sub.add_argument("group")
        sub.add_argument("user")

    sources = group("source", "manage upstream databases")
    sub = add(sources, "add", cmd_source_add, "register an upstream database", [password])
    sub.add_argument("name", help="the name clients use as their database")
    sub.add_argument("--engine", required=True, choices=[e.value for e in Engine])
    sub.add_argument("--host", required=True)
    sub.add_argument("--port", type=int, help="default 5432 (postgresql) or 3306 (mysql)")
    sub.add_argument("--database", required=True)
    sub.add_argument("--user", required=True, help="the upstream read login")
    sub.add_argument("--no-password", action="store_true", help="the read login has no password")
    sub.add_argument("--write-user", help="the upstream login that runs approved changes")
    sub.add_argument("--write-password-env", metavar="VAR", help="read the write password from $VAR")
    sub.add_argument("--tls", choices=[t.value for t in UpstreamTLS], default=UpstreamTLS.PREFER.value)
    sub.add_argument("--pool-size", type=int, default=10)
    sub.add_argument(
        "--pool-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a client waits for a free upstream connection (default 10)",
    )
    add(sources, "list", cmd_source_list, "list sources", [as_json])
    add(sources, "show", cmd_source_show, "show one source", [as_json]).add_argument("name")
    add(sources, "test", cmd_source_test, "log in upstream with the source's logins", [as_json]).add_argument(
        "name"
    )
    add(sources, "remove", cmd_source_remove, "remove a source and its grants").add_argument("name")

    levels = [lvl.value for lvl in Level]
    grant = commands.add_parser(
        "grant",
        help="grant a level on a source to a group, or `grant list`",
        description="querybase grant GROUP SOURCE LEVEL | querybase grant list [--json]",
        parents=[common, as_json],
    )
    grant.add_argument("group", help="group name, or `list`")
    grant.add_argument("source", nargs="?")
    grant.add_argument("level", nargs="?", choices=levels)
    grant.set_defaults(handler=_grant_or_list)
    sub = add(commands, "revoke", cmd_revoke, "revoke a level on a source from a group")
    sub.add_argument("group")
    sub.add_argument("source")
    sub.add_argument("level", choices=levels)

    audits = group("audit", "inspect the audit log")
    add(audits, "verify", cmd_audit_verify, "check the audit hash chain", [as_json])
    return parser


async def _grant_or_list(ctx: Context, args: argparse.Namespace) -> int:
    # `grant list` and `grant GROUP SOURCE LEVEL` share a verb, so they share a parser.
    if args.group == "list" and args.source is None:
        return await cmd_grant_list(ctx, args)
    if args.source is None or args.level is None:
        raise InvalidInput("usage: querybase grant GROUP SOURCE LEVEL  (or: querybase grant list)")
    if args.json:
        raise InvalidInput("--json goes with `grant list`")
    return await cmd_grant(ctx, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = os.environ
    config_path = resolve_config_path(getattr(args, "config", None), environ)
    try:
        if args.handler is cmd_init:
            write_default_config(config_path)
        settings = load_settings(config_path, environ)
        return _run(_invoke(args.handler, settings, environ, args))
    except QueryBaseError as exc:
        print(f"querybase: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("querybase: interrupted", file=sys.stderr)
        return 130


async def _invoke(
    handler: Handler, settings: Settings, environ: Mapping[str, str], args: argparse.Namespace
) -> int:
    ctx = Context(settings, environ, sys.stdout, sys.stderr)
    try:
        return await handler(ctx, args)
    finally:
        await ctx.store.close()


def _run(coro: Awaitable[int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
