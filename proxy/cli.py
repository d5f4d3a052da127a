"""The `querybase` command line: init, serve, and catalog management for people at a terminal.

Every command takes `--config`; list commands take `--json`; passwords come from
`--password-stdin`, `--password-env VAR` or an interactive prompt, never from argv. Errors print
one line `querybase: error: …` on stderr and exit 1 (usage errors exit 2, from argparse).

`querybase requests …` acts as a named QueryBase user (`--as USER` or an API token) through
`proxy.changes.service.ChangeService`, so it enforces the admin API's rules; its errors print
`querybase: error: CODE: …` and exit per class (REQUEST_EXIT_CODES).

The catalog verbs go through the same `Catalog` methods and `admin_api.tokens` functions as the
admin API, so they enforce its rules and audit the same events (actor `cli:<os user>`). Every
command, option and exit code is in docs/cli.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import structlog
from sqlalchemy import func, select

from policies.types import Level
from proxy.audit import log as audit
from proxy.config import DEFAULT_CONFIG_TEXT, Settings, load_settings, resolve_config_path
from proxy.errors import InvalidInput, QueryBaseError, StoreError, Unauthorized
from proxy.store import requests as rq
from proxy.store.catalog import PG_AUTH_METHODS, POOL_MODES, Catalog, SourceSpec
from proxy.store.crypto import SecretBox, create_key_file, load_key
from proxy.store.db import Store
from proxy.store.models import AuditEvent, Decision, Engine, UpstreamTLS, utcnow

ADMIN_USER = "admin"
ADMIN_PASSWORD_ENV = "QUERYBASE_ADMIN_PASSWORD"  # noqa: S105 - a variable name
DEFAULT_PORTS = {Engine.POSTGRESQL: 5432, Engine.MYSQL: 3306}
EXPORT_BATCH = 1000  # events per query of `audit export`: memory stays bounded whatever the log's size

Handler = Callable[["Context", argparse.Namespace], Awaitable[int]]


class Context:
    """What a command needs: settings, the store, streams and the environment."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], out: TextIO, err: TextIO) -> None:
        self.settings = settings
        self.environ = environ
        self.out = out
        self.err = err
        self.store = Store(settings.store.url)
        audit.configure_anchor(settings, self.store)  # catalog changes made here move the anchor
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
    from proxy.observe.logging import configure
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
    # update_user, as the API's PATCH: it refuses to disable the last active admin.
    await ctx.require_current_schema()
    await ctx.catalog().update_user(args.name, active=False, actor=ctx.actor)
    ctx.print(f"user {args.name!r} disabled")
    return 0


async def cmd_user_enable(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().update_user(args.name, active=True, actor=ctx.actor)
    ctx.print(f"user {args.name!r} enabled")
    return 0


async def cmd_user_set(ctx: Context, args: argparse.Namespace) -> int:
    # Only the admin flag: active is `user enable` / `user disable`, the password `user passwd`.
    await ctx.require_current_schema()
    view = await ctx.catalog().update_user(args.name, admin=args.admin, actor=ctx.actor)
    ctx.print(f"user {view.name!r} is {'an admin' if view.admin else 'not an admin'}")
    return 0


async def cmd_user_remove(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().remove_user(args.name, actor=ctx.actor)
    ctx.print(f"user {args.name!r} removed, with their memberships and API tokens")
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


async def cmd_group_remove(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    await ctx.catalog().remove_group(args.name, actor=ctx.actor)
    ctx.print(f"group {args.name!r} removed, with its memberships and grants")
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
        tls=UpstreamTLS(args.tls) if args.tls else None,
        tls_ca_pem=read_ca_file(args.tls_ca) if args.tls_ca else None,
        pool_size=args.pool_size,
        pool_timeout_seconds=args.pool_timeout,
        pool_mode=args.pool_mode,
    )
    catalog = ctx.catalog(with_key=True)
    view = await catalog.add_source(spec, read_password=read_pw, write_password=write_pw, actor=ctx.actor)
    ctx.print(f"source {args.name!r} added ({engine.value} {spec.host}:{spec.port}/{spec.database})")
    if view.tls_warning:
        ctx.print(f"warning: upstream TLS ({view.tls}): {view.tls_warning}")
    return 0


def read_ca_file(path: str) -> str:
    """`--tls-ca FILE`: the PEM bundle's text, stored in the catalog (validated there)."""
    try:
        return Path(path).read_text(encoding="ascii")
    except OSError as exc:
        raise InvalidInput(f"--tls-ca: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"--tls-ca: {path} is not a PEM file (not ASCII text)") from None


async def cmd_source_set(ctx: Context, args: argparse.Namespace) -> int:
    changes = source_changes(args, ctx.environ)
    if not changes:
        raise InvalidInput("nothing to change: give at least one option (see `querybase source set -h`)")
    await ctx.require_current_schema()
    catalog = ctx.catalog(with_key=any(k in changes for k in ("read_password", "write_password")))
    view = await catalog.update_source(args.name, changes, actor=ctx.actor)
    ctx.print(f"source {args.name!r} updated: {', '.join(sorted(changes))}")
    if "tls_ca_pem" in changes and "tls" not in changes and changes["tls_ca_pem"]:
        ctx.print(f"tls is now {view.tls}")
    if view.tls_warning and {"tls", "tls_ca_pem"} & set(changes):
        ctx.print(f"warning: upstream TLS ({view.tls}): {view.tls_warning}")
    return 0


# `source set` options that map one to one onto a MUTABLE_SOURCE_FIELDS key.
_SOURCE_SET_FIELDS = {
    "host": "host",
    "port": "port",
    "database": "database",
    "user": "read_user",
    "write_user": "write_user",
    "tls": "tls",
    "pool_size": "pool_size",
    "pool_timeout": "pool_timeout_seconds",
    "pool_mode": "pool_mode",
    "approvals": "approvals_required",
    "ddl_approvals": "ddl_approvals_required",
    "block_ddl": "block_ddl",
    "request_ttl": "request_ttl_seconds",
    "hold_wait": "hold_wait_seconds",
}


def source_changes(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """The `Catalog.update_source` changes `source set` was given: only the options present.

    Passwords come from the environment or stdin (one line each; not both from stdin), never argv.
    A `--no-…` / `--all-schemas` option puts None, which clears the field as the API's null does.
    """
    changes: dict[str, Any] = {
        key: getattr(args, option)
        for option, key in _SOURCE_SET_FIELDS.items()
        if getattr(args, option) is not None
    }
    if args.no_write_user:
        if args.write_password_env or args.write_password_stdin:
            raise InvalidInput("--no-write-user clears the write password too; drop --write-password-…")
        changes["write_user"] = None
    if args.no_ddl_approvals:
        changes["ddl_approvals_required"] = None
    if args.no_tls_ca:
        changes["tls_ca_pem"] = None
    elif args.tls_ca:
        changes["tls_ca_pem"] = read_ca_file(args.tls_ca)
    if args.trusted_functions is not None:
        changes["trusted_functions"] = tuple(
            f.strip() for f in args.trusted_functions.split(",") if f.strip()
        )
    if args.all_schemas:
        changes["allowed_schemas"] = None
    elif args.schemas is not None:
        changes["allowed_schemas"] = tuple(s.strip() for s in args.schemas.split(","))
    if changes.get("write_user") == "":
        raise InvalidInput("--write-user must not be empty (use --no-write-user to remove it)")
    if args.password_stdin and args.write_password_stdin:
        raise InvalidInput("--password-stdin and --write-password-stdin: stdin holds only one password")
    if args.no_password:
        changes["read_password"] = None
    elif args.password_env or args.password_stdin:
        changes["read_password"] = _given_password("--password", args.password_env, environ)
    if args.write_password_env or args.write_password_stdin:
        changes["write_password"] = _given_password("--write-password", args.write_password_env, environ)
    return changes


def _given_password(option: str, var: str | None, environ: Mapping[str, str]) -> str:
    if var:
        value = _password_from_env(var, environ)
        where = f"{option}-env: ${var}"
    else:
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput(f"{option}-stdin: standard input is empty")
        value, where = line.rstrip("\r\n"), f"{option}-stdin"
    if not value:  # an empty password would clear it: say so explicitly instead
        clear = "--no-password" if option == "--password" else "--no-write-user"
        raise InvalidInput(f"{where} is empty; to clear the password use {clear}")
    return value


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
                "pool_mode",
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
                    s.pool_mode,
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
        if key == "boundary":
            for i, line in enumerate(boundary_lines(args.name, value)):
                text = line.removeprefix(f"{args.name} boundary: ")
                ctx.print(f"{key + ':' if i == 0 else '':<24}{text}")
            continue
        if key == "tls_ca":  # one certificate a line: their subjects hold commas
            for i, line in enumerate(value or ["-"]):
                ctx.print(f"{key + ':' if i == 0 else '':<24}{line}")
            continue
        ctx.print(f"{key + ':':<24}{_cell(value)}")
    grants = ", ".join(f"{g['group']}={g['level']}" for g in data["grants"]) or "-"
    ctx.print(f"{'grants:':<24}{grants}")
    return 0


async def cmd_source_test(ctx: Context, args: argparse.Namespace) -> int:
    from proxy.upstream.probe import check_source

    await ctx.require_current_schema()
    catalog = ctx.catalog(with_key=True)
    result = await check_source(await catalog.source_credentials(args.name))
    logins = {r.role: r.ok for r in result.logins}
    view = await catalog.record_source_test(args.name, logins, result.boundary.as_dict(), actor=ctx.actor)
    if args.json:
        print_json(ctx, {"logins": [asdict(r) for r in result.logins], "boundary": view.boundary})
    else:
        for r in result.logins:
            status = "ok" if r.ok else "FAILED"
            ctx.print(f"{args.name} {r.role} login {r.user!r}: {status}: {r.detail}")
        for line in boundary_lines(args.name, result.boundary.as_dict()):
            ctx.print(line)
    return 0 if all(logins.values()) else 1


def boundary_lines(source: str, boundary: Mapping[str, Any] | None) -> list[str]:
    """What `source test` and `source show` say about the read login's own privileges."""
    if boundary is None:
        return [f"{source} boundary: never checked (run `querybase source test {source}`)"]
    when = f" (checked {boundary['checked_at']})" if "checked_at" in boundary else ""
    login = boundary.get("login")
    if boundary.get("error"):
        return [f"{source} boundary: not checked: {boundary['error']}{when}"]
    findings = boundary.get("findings") or []
    if not findings:
        return [f"{source} boundary: read login {login!r} could not write on its own: no findings{when}"]
    lines = [
        f"{source} boundary: read login {login!r} could act without QueryBase: "
        f"{len(findings)} finding{'s' if len(findings) > 1 else ''}{when}"
    ]
    lines += [f"  [{f['severity']}] {f['what']}: {f['why']}" for f in findings]
    return lines


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


# ------------------------------------------------------------------------------------ tokens

TOKEN_NAME_MAX = 63  # the admin API's bounds (admin_api/auth.py ApiTokenCreate)
TOKEN_DAYS_MAX = 3650


async def cmd_token_create(ctx: Context, args: argparse.Namespace) -> int:
    from admin_api import tokens

    if not 1 <= len(args.name) <= TOKEN_NAME_MAX:
        raise InvalidInput(f"--name: 1-{TOKEN_NAME_MAX} characters")
    if args.expires_days is not None and not 1 <= args.expires_days <= TOKEN_DAYS_MAX:
        raise InvalidInput(f"--expires-days: must be 1-{TOKEN_DAYS_MAX}")
    await ctx.require_current_schema()
    text, view = await tokens.create_api_token(
        ctx.store, user=args.user, name=args.name, expires_in_days=args.expires_days, actor=ctx.actor
    )
    # The token alone on stdout, so `TOKEN=$(querybase token create …)` works; the note on stderr.
    ctx.print(text)
    expires = f"expires {_when(view.expires_at)}" if view.expires_at else "never expires"
    print(
        f"querybase: API token {view.id} {view.name!r} for user {view.user!r} created ({expires}); "
        "it is shown only this once",
        file=ctx.err,
    )
    return 0


async def cmd_token_list(ctx: Context, args: argparse.Namespace) -> int:
    from admin_api import tokens

    await ctx.require_current_schema()
    views = await tokens.list_api_tokens(ctx.store)
    if args.json:
        print_request_json(ctx, [asdict(v) for v in views])
        return 0
    print_table(
        ctx,
        ["id", "name", "user", "created_by", "created", "expires", "revoked", "last_used"],
        [
            (
                v.id,
                v.name,
                v.user,
                v.created_by,
                _when(v.created_at),
                _when(v.expires_at),
                _when(v.revoked_at),
                _when(v.last_used_at),
            )
            for v in views
        ],
    )
    return 0


async def cmd_token_revoke(ctx: Context, args: argparse.Namespace) -> int:
    from admin_api import tokens

    await ctx.require_current_schema()
    await tokens.revoke_api_token(ctx.store, args.id, actor=ctx.actor)  # refusals audited there
    ctx.print(f"API token {args.id} revoked")
    return 0


# ------------------------------------------------------------------------------------- audit


async def cmd_audit_verify(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.require_current_schema()
    result = await audit.verify_store(ctx.store, ctx.settings)
    if args.json:
        print_json(ctx, asdict(result))
    else:
        ctx.print(result.describe())
    if result.ok and result.note:
        print(f"querybase: warning: {result.note}", file=ctx.err)
    return 0 if result.ok else 1


def parse_moment(option: str, value: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC, like everything stored."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{option}: {value!r} is not an ISO 8601 date or date-time") from None
    return audit.as_utc(moment)


async def cmd_audit_export(ctx: Context, args: argparse.Namespace) -> int:
    since = parse_moment("--since", args.since) if args.since else None
    until = parse_moment("--until", args.until) if args.until else None
    await ctx.require_current_schema()
    if args.output in (None, "-"):
        count = await _export(ctx, ctx.out, since, until)
    else:
        # Written beside the target and renamed at the end: a failed export leaves no half file.
        target = Path(args.output)
        partial = target.with_name(f".{target.name}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise InvalidInput(f"--output: cannot write {target}: {exc.strerror}") from None
        try:  # blocking writes are fine here: one command, no event loop shared with anything
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as stream:
                count = await _export(ctx, stream, since, until)
                stream.flush()
                os.fsync(stream.fileno())
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    print(f"querybase: exported {count} audit events", file=ctx.err)
    return 0


async def _export(ctx: Context, stream: TextIO, since: datetime | None, until: datetime | None) -> int:
    count = 0
    async with ctx.store.session() as session:
        async for event in audit.iter_events(session, EXPORT_BATCH, since=since, until=until):
            stream.write(audit.export_line(event) + "\n")
            count += 1
    return count


# ---------------------------------------------------------------------------------- requests

PASSWORD_ENV = "QUERYBASE_PASSWORD"  # noqa: S105 - a variable name
TOKEN_ENV = "QUERYBASE_TOKEN"  # noqa: S105 - a variable name
LOGIN_FAILED_KIND = "cli.login_failed"
# Failed `--as` logins per user name in a sliding window, counted from the audit log because every
# CLI run is a new process (the API's in-memory LoginLimiter allows the same per user).
LOGIN_FAILURE_LIMIT = 5
LOGIN_FAILURE_WINDOW = timedelta(seconds=60)
NOTIFY_CLOSE_SECONDS = 3.0
STATEMENT_COLUMN = 60

# Exit codes of `querybase requests …` per error code (docs/cli-requests.md); others exit 1.
REQUEST_EXIT_CODES = {
    "no_identity": 2,
    "unauthorized": 3,
    "login_failed": 3,
    "forbidden": 4,
    "not_found": 5,
    "state_conflict": 6,
    "invalid": 7,
}
EXECUTION_FAILED_EXIT = 8  # approve: the approval landed, the execution failed (or ended unknown)


class NoIdentity(QueryBaseError):
    """`querybase requests` was not told who is acting."""

    code = "no_identity"


async def request_actor(ctx: Context, args: argparse.Namespace) -> rq.Actor:
    """The QueryBase user acting: `--as USER` with a password, else an API token (`--token` or
    $QUERYBASE_TOKEN). Failed password logins are audited and limited like the API's."""
    from admin_api import tokens

    if args.as_user:
        password = _acting_password(args.as_user, ctx.environ)
        await ctx.require_current_schema()
        return await _password_actor(ctx, args.as_user, password)
    token = args.token or ctx.environ.get(TOKEN_ENV)
    if not token:
        raise NoIdentity(
            f"say who is acting: --as USER (password from ${PASSWORD_ENV} or a prompt), "
            f"or --token TOKEN / ${TOKEN_ENV}"
        )
    await ctx.require_current_schema()
    signing_key = tokens.derive_signing_key(load_key(ctx.settings, ctx.environ))
    principal = await tokens.authenticate(ctx.store, signing_key, token)
    return rq.Actor(principal.name, principal.is_admin)


def _acting_password(user: str, environ: Mapping[str, str]) -> str:
    if PASSWORD_ENV in environ:
        return environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise NoIdentity(f"no password for {user!r}: set ${PASSWORD_ENV} (stdin is not a terminal)")
    return getpass.getpass(f"password for {user!r}: ")


async def _password_actor(ctx: Context, user: str, password: str) -> rq.Actor:
    from admin_api import tokens
    from proxy.auth.limits import LoginFailed

    since = utcnow() - LOGIN_FAILURE_WINDOW
    async with ctx.store.session() as session:
        recent = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.kind == LOGIN_FAILED_KIND,
                AuditEvent.actor == user,
                AuditEvent.occurred_at >= since,
            )
        )
    payload = {"os_user": _os_user()}
    if (recent or 0) >= LOGIN_FAILURE_LIMIT:
        await tokens.audit_event(
            ctx.store, LOGIN_FAILED_KIND, actor=user, payload={**payload, "reason": "rate limited"}
        )
        window = LOGIN_FAILURE_WINDOW.total_seconds()
        raise LoginFailed(f"too many failed logins for this user; try again in {window:g} seconds")
    principal, reason = await tokens.check_password(ctx.store, user, password)
    if principal is None:
        await tokens.audit_event(
            ctx.store, LOGIN_FAILED_KIND, actor=user, payload={**payload, "reason": reason}
        )
        raise Unauthorized("invalid user name or password")
    return rq.Actor(principal.name, principal.is_admin)


@contextlib.contextmanager
def _warnings_only(err: TextIO) -> Iterator[None]:
    # The executor and notifier log as structlog events; for a command, only warnings matter, and
    # they go to stderr so stdout stays the command's output. The previous setup is restored.
    saved = structlog.get_config() if structlog.is_configured() else None
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(err),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        if saved is None:
            structlog.reset_defaults()
        else:
            structlog.configure(**saved)


@contextlib.asynccontextmanager
async def change_service(ctx: Context) -> AsyncIterator[Any]:
    """A ChangeService whose executor runs in this process and whose events go out as webhooks."""
    from proxy.changes.executor import Executor
    from proxy.changes.notify import Notifier
    from proxy.changes.service import ChangeService

    with _warnings_only(ctx.err):
        catalog = ctx.catalog(with_key=True)
        notifier = Notifier(ctx.settings.notify, ctx.store)
        await notifier.start()
        try:
            yield ChangeService(ctx.store, catalog, Executor(ctx.store, catalog, notifier))
        finally:
            await notifier.close(NOTIFY_CLOSE_SECONDS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_request_json(ctx: Context, data: Any) -> None:
    ctx.print(json.dumps(data, indent=2, sort_keys=True, default=_jsonable))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def _first_line(text: str, width: int = STATEMENT_COLUMN) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _param_value(encoded: str | None) -> str:
    """A held parameter's value: NULL, the text when it is printable UTF-8, else base64."""
    if encoded is None:
        return "NULL"
    raw = base64.b64decode(encoded)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"base64:{encoded}"
    return repr(text) if text.isprintable() else f"base64:{encoded}"


def _param_type(param: Mapping[str, Any]) -> str:
    if "type_oid" in param:  # PostgreSQL Bind: type OID (0 = unspecified) and format code
        return f"oid {param['type_oid']}, {'binary' if param.get('format') == 1 else 'text'}"
    unsigned = " unsigned" if param.get("unsigned") else ""  # MySQL COM_STMT_EXECUTE
    return f"type {param.get('type')}{unsigned}"


def _rows_affected(ex: rq.ExecutionView) -> str:
    affected = ex.rows_affected or {}
    total = affected.get("total", 0)
    tags = ", ".join(str(s.get("tag")) for s in affected.get("statements", []) if s.get("tag"))
    rows = f"{total} row{'' if total == 1 else 's'} affected"
    return f"{rows} ({tags})" if tags else rows


def _error_text(ex: rq.ExecutionView) -> str:
    codes = []
    if ex.sqlstate:
        codes.append(f"SQLSTATE {ex.sqlstate}")
    if ex.mysql_errno is not None:
        codes.append(f"errno {ex.mysql_errno}")
    return ": ".join([*codes, ex.error_message or "no message"])


async def cmd_requests_list(ctx: Context, args: argparse.Namespace) -> int:
    actor = await request_actor(ctx, args)
    views = await rq.list_requests(
        ctx.store, actor, status=args.status, source=args.source, requester=args.requester, limit=args.limit
    )
    if args.json:
        print_request_json(ctx, [asdict(v) for v in views])
        return 0
    print_table(
        ctx,
        ["id", "status", "source", "requester", "kind", "approvals", "created", "statement"],
        [
            (
                v.id,
                v.status,
                v.source,
                v.requester,
                v.kind,
                f"{v.approvals}/{v.approvals_required}",
                _when(v.created_at),
                _first_line(v.statement),
            )
            for v in views
        ],
    )
    return 0


async def cmd_requests_show(ctx: Context, args: argparse.Namespace) -> int:
    actor = await request_actor(ctx, args)
    view = await rq.get_request(ctx.store, actor, args.id)
    if args.json:
        print_request_json(ctx, asdict(view))
        return 0
    print_request(ctx, view)
    return 0


def print_request(ctx: Context, view: rq.RequestDetail) -> None:
    def field(name: str, value: Any) -> None:
        ctx.print(f"{name + ':':<16}{_cell(value)}")

    field("request", view.id)
    field("status", view.status)
    field("source", f"{view.source} ({view.engine})")
    field("requester", view.requester)
    field("kind", view.kind)
    field("approvals", f"{view.approvals}/{view.approvals_required}")
    field("created", _when(view.created_at))
    field("updated", _when(view.updated_at))
    field("expires", _when(view.expires_at))
    field("decided", _when(view.decided_at))
    ctx.print("statement:")
    for line in view.statement.splitlines():
        ctx.print(f"  {line}")
    if view.parameters:
        ctx.print("parameters:")
        for n, param in enumerate(view.parameters, 1):
            ctx.print(f"  ${n}  {_param_type(param)}  {_param_value(param.get('value_b64'))}")
    c = view.classification
    tables = ",".join(c.get("tables") or []) or "-"
    reason = f", {c['reason']}" if c.get("reason") else ""
    ctx.print(
        f"{'classification:':<16}{c.get('kind')}, tables {tables}, {c.get('statements')} statement(s){reason}"
    )
    if view.session_facts:
        ctx.print("session:")
        for key, value in sorted(view.session_facts.items()):
            ctx.print(f"  {key}: {_cell(value)}")
    if view.reviews:
        ctx.print("reviews:")
        for r in view.reviews:
            comment = f"  {r.comment!r}" if r.comment else ""
            ctx.print(f"  {_when(r.created_at)}  {r.reviewer}  {r.decision}{comment}")
    ex = view.execution
    if ex is None:
        return
    ctx.print("execution:")
    ctx.print(f"  outcome:     {ex.outcome or '-'}")
    ctx.print(f"  executor:    {ex.executor}")
    ctx.print(f"  started:     {_when(ex.started_at)}")
    ctx.print(f"  finished:    {_when(ex.finished_at)}")
    if ex.duration_ms is not None:
        ctx.print(f"  duration:    {ex.duration_ms:.1f} ms")
    if ex.rows_affected is not None:
        ctx.print(f"  affected:    {_rows_affected(ex)}")
    if ex.sqlstate or ex.mysql_errno is not None or ex.error_message:
        ctx.print(f"  error:       {_error_text(ex)}")
    if ex.returning_rows:
        ctx.print(f"  returning:   {len(ex.returning_rows)} row(s)")
        for row in ex.returning_rows:
            ctx.print(f"    {json.dumps(row, sort_keys=True, default=str)}")


def outcome_line(view: rq.RequestDetail) -> tuple[str, int]:
    """What an approval led to, as one line, and the exit code."""
    head = f"change request {view.id}"
    ex = view.execution
    if view.status == "pending":
        return f"{head}: approval recorded ({view.approvals}/{view.approvals_required}); still pending", 0
    if view.status == "succeeded" and ex is not None:
        return f"{head}: approved and executed: succeeded, {_rows_affected(ex)}", 0
    if view.status == "failed" and ex is not None:
        return f"{head}: approved, execution failed: {_error_text(ex)}", EXECUTION_FAILED_EXIT
    if view.status == "unknown":
        return f"{head}: approved, outcome unknown: check the database by hand", EXECUTION_FAILED_EXIT
    # Another QueryBase process claimed it first (approved → executing there).
    return (
        f"{head}: approved; {view.status} in another QueryBase process "
        f"(see `querybase requests show {view.id}`)",
        0,
    )


async def cmd_requests_approve(ctx: Context, args: argparse.Namespace) -> int:
    actor = await request_actor(ctx, args)
    async with change_service(ctx) as changes:
        view = await changes.review(actor, args.id, Decision.APPROVE, args.comment, wait=True)
    line, code = outcome_line(view)
    ctx.print(line)
    if view.execution is not None and view.execution.returning_rows:
        for row in view.execution.returning_rows:
            ctx.print(f"  {json.dumps(row, sort_keys=True, default=str)}")
    return code


async def cmd_requests_reject(ctx: Context, args: argparse.Namespace) -> int:
    actor = await request_actor(ctx, args)
    async with change_service(ctx) as changes:
        view = await changes.review(actor, args.id, Decision.REJECT, args.comment)
    ctx.print(f"change request {view.id}: {view.status}")
    return 0


async def cmd_requests_cancel(ctx: Context, args: argparse.Namespace) -> int:
    actor = await request_actor(ctx, args)
    async with change_service(ctx) as changes:
        view = await changes.cancel(actor, args.id, args.comment)
    ctx.print(f"change request {view.id}: {view.status}")
    return 0


async def cmd_requests_submit(ctx: Context, args: argparse.Namespace) -> int:
    script = args.sql if args.sql is not None else _read_script(args.file)
    actor = await request_actor(ctx, args)
    async with change_service(ctx) as changes:
        view = await changes.submit(actor, args.source, script)
    ctx.print(
        f"change request {view.id} created on {view.source}: {view.status}, "
        f"needs {view.approvals_required} approval(s)"
    )
    return 0


def _read_script(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"--file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"--file: {path} is not UTF-8 text") from None


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
    sub = add(users, "set", cmd_user_set, "make a user an admin, or no longer one")
    sub.add_argument("name")
    admin_flag = sub.add_mutually_exclusive_group(required=True)
    admin_flag.add_argument(
        "--admin", dest="admin", action="store_true", default=None, help="may manage the catalog"
    )
    admin_flag.add_argument("--no-admin", dest="admin", action="store_false", help="no longer an admin")
    add(
        users, "remove", cmd_user_remove, "delete a user (refused for the last admin or one with requests)"
    ).add_argument("name")

    groups = group("group", "manage groups and their members")
    add(groups, "add", cmd_group_add, "create a group").add_argument("name")
    add(groups, "list", cmd_group_list, "list groups with their members", [as_json])
    add(groups, "remove", cmd_group_remove, "delete a group with its memberships and grants").add_argument(
        "name"
    )
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
    sub.add_argument(
        "--tls", choices=[t.value for t in UpstreamTLS], help=TLS_HELP + "; default: " + TLS_DEFAULT
    )
    sub.add_argument("--tls-ca", metavar="FILE", help=TLS_CA_HELP)
    sub.add_argument("--pool-size", type=int, default=10)
    sub.add_argument(
        "--pool-mode",
        choices=POOL_MODES,
        help="transaction: clients share upstream connections between transactions (default for "
        "PostgreSQL); session: one upstream connection per client session (default for MySQL, "
        "which has no transaction pooling yet); docs/pooling.md",
    )
    sub.add_argument(
        "--pool-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a client waits for a free upstream connection (default 10)",
    )
    sub = add(sources, "set", cmd_source_set, "change some settings of a source (only those given)")
    add_source_set_options(sub)
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

    api_tokens = group("token", "mint, list and revoke admin API tokens")
    sub = add(api_tokens, "create", cmd_token_create, "mint a token acting as a user; prints it once")
    sub.add_argument("--user", required=True, help="the user the token acts as")
    sub.add_argument("--name", required=True, metavar="LABEL", help="what uses the token, e.g. ci")
    sub.add_argument("--expires-days", type=int, metavar="N", help="expire after N days (default: never)")
    add(api_tokens, "list", cmd_token_list, "list tokens, revoked ones included; never their text", [as_json])
    sub = add(api_tokens, "revoke", cmd_token_revoke, "revoke a token; it stops working at once")
    sub.add_argument("id", type=int)

    audits = group("audit", "inspect the audit log")
    add(audits, "verify", cmd_audit_verify, "check the audit hash chain and its anchor", [as_json])
    sub = add(audits, "export", cmd_audit_export, "write events as JSON Lines, oldest first")
    sub.add_argument("--since", metavar="WHEN", help="events at or after WHEN (ISO 8601; no offset = UTC)")
    sub.add_argument("--until", metavar="WHEN", help="events before WHEN (ISO 8601; no offset = UTC)")
    sub.add_argument("--output", "-o", metavar="FILE", help="write to FILE (mode 0600) instead of stdout")

    identity = argparse.ArgumentParser(add_help=False)
    who = identity.add_mutually_exclusive_group()
    who.add_argument(
        "--as", dest="as_user", metavar="USER", help=f"act as USER (password: ${PASSWORD_ENV}, else a prompt)"
    )
    who.add_argument("--token", help=f"act with an API token (qbt_…); default ${TOKEN_ENV}")
    change_requests = group("requests", "list, show, approve, reject, cancel and submit change requests")
    acting = [identity]

    def request_verb(name: str, handler: Handler, help_text: str, parents: Sequence[Any] = ()) -> Any:
        sub = add(change_requests, name, handler, help_text, [*acting, *parents])
        sub.set_defaults(exit_codes=REQUEST_EXIT_CODES)
        return sub

    sub = request_verb("list", cmd_requests_list, "list requests you may see, newest first", [as_json])
    sub.add_argument("--status", help="pending, approved, executing, succeeded, failed, rejected, …")
    sub.add_argument("--source")
    sub.add_argument("--requester", metavar="USER")
    sub.add_argument("--limit", type=int, default=50, help=f"at most N (default 50, max {rq.MAX_LIST})")
    sub = request_verb("show", cmd_requests_show, "show one change request in full", [as_json])
    sub.add_argument("id", type=int)
    sub = request_verb("approve", cmd_requests_approve, "approve; the last approval runs it here")
    sub.add_argument("id", type=int)
    sub.add_argument("--comment", default="")
    sub = request_verb("reject", cmd_requests_reject, "reject, saying why")
    sub.add_argument("id", type=int)
    sub.add_argument("--comment", required=True, help="why (required)")
    sub = request_verb("cancel", cmd_requests_cancel, "withdraw your own pending request")
    sub.add_argument("id", type=int)
    sub.add_argument("--comment", default="")
    sub = request_verb("submit", cmd_requests_submit, "propose a SQL script as one change request")
    sub.add_argument("--source", required=True)
    script = sub.add_mutually_exclusive_group(required=True)
    script.add_argument("--file", metavar="PATH", help="read the script from PATH (- for stdin)")
    script.add_argument("--sql", metavar="TEXT", help="the script itself")
    return parser


TLS_HELP = (
    "upstream TLS: disable, prefer, require (encrypt, certificate NOT verified), "
    "verify-ca (certificate chains to the CA), verify-full (and names the host)"
)
TLS_DEFAULT = "verify-full with --tls-ca, else prefer"
TLS_CA_HELP = "PEM CA bundle the upstream's certificate must chain to (its text is stored in the catalog)"


def add_source_set_options(sub: argparse.ArgumentParser) -> None:
    """`source set`: every option defaults to None (unchanged); pairs are mutually exclusive."""
    sub.add_argument("name")
    sub.add_argument("--host")
    sub.add_argument("--port", type=int)
    sub.add_argument("--database")
    sub.add_argument("--user", help="the upstream read login")
    read_pw = sub.add_mutually_exclusive_group()
    read_pw.add_argument("--password-env", metavar="VAR", help="new read password from $VAR")
    read_pw.add_argument("--password-stdin", action="store_true", help="new read password from stdin")
    read_pw.add_argument("--no-password", action="store_true", help="clear the read password")
    write_user = sub.add_mutually_exclusive_group()
    write_user.add_argument("--write-user", metavar="USER", help="the upstream login that runs changes")
    write_user.add_argument(
        "--no-write-user", action="store_true", help="remove the write login and its password"
    )
    write_pw = sub.add_mutually_exclusive_group()
    write_pw.add_argument("--write-password-env", metavar="VAR", help="new write password from $VAR")
    write_pw.add_argument("--write-password-stdin", action="store_true", help="new write password from stdin")
    sub.add_argument("--tls", choices=[t.value for t in UpstreamTLS], help=TLS_HELP)
    ca = sub.add_mutually_exclusive_group()
    ca.add_argument("--tls-ca", metavar="FILE", help=TLS_CA_HELP + "; without --tls, also sets verify-full")
    ca.add_argument(
        "--no-tls-ca", action="store_true", help="remove the CA bundle (verify with the system's)"
    )
    sub.add_argument("--pool-size", type=int, metavar="N")
    sub.add_argument("--pool-timeout", type=float, metavar="SECONDS")
    sub.add_argument("--pool-mode", choices=POOL_MODES, help="transaction or session (docs/pooling.md)")
    sub.add_argument("--approvals", type=int, metavar="N", help="approvals a change request needs")
    ddl = sub.add_mutually_exclusive_group()
    ddl.add_argument("--ddl-approvals", type=int, metavar="N", help="approvals a DDL request needs")
    ddl.add_argument("--no-ddl-approvals", action="store_true", help="DDL needs --approvals, like DML")
    block = sub.add_mutually_exclusive_group()
    block.add_argument(
        "--block-ddl", dest="block_ddl", action="store_true", default=None, help="refuse DDL on this source"
    )
    block.add_argument("--allow-ddl", dest="block_ddl", action="store_false", help="DDL as other writes")
    sub.add_argument("--request-ttl", type=int, metavar="SECONDS", help="pending requests expire after this")
    sub.add_argument(
        "--hold-wait", type=int, metavar="SECONDS", help="a held statement waits for approval (0: no wait)"
    )
    schemas = sub.add_mutually_exclusive_group()
    schemas.add_argument("--schemas", metavar="A,B", help="only these schemas (comma-separated)")
    schemas.add_argument("--all-schemas", action="store_true", help="no schema restriction")
    sub.add_argument(
        "--trusted-functions",
        metavar="F,S.G",
        help="functions reads may call besides vetted built-ins (comma-separated; empty: none)",
    )


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
        exit_codes: dict[str, int] | None = getattr(args, "exit_codes", None)
        if exit_codes is None:
            print(f"querybase: error: {exc.message}", file=sys.stderr)
            return 1
        print(f"querybase: error: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_codes.get(exc.code, 1)
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
