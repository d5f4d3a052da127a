"""Catalog operations on users, groups, memberships, sources and grants, each audited.

The CLI and the admin API both call these; they validate input, raise the QueryBaseError subclass
that fits (NotFound, AlreadyExists, InvalidInput), and return plain frozen views that never hold a
password or a sealed secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policies.types import Level
from proxy.audit import log as audit
from proxy.auth.verifiers import make_verifiers, pg_md5_verifier
from proxy.errors import AlreadyExists, InvalidInput, NotFound
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import (
    Engine,
    Grant,
    Group,
    Membership,
    Source,
    UpstreamTLS,
    User,
    utcnow,
)
from proxy.tlsfiles import describe_ca_bundle, load_ca_bundle, tls_verified, tls_warning

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
MIN_PASSWORD_LENGTH = 8
# Effective data level: the highest of these a user holds through any group.
_DATA_LEVELS = (Level.READ, Level.PROPOSE, Level.WRITE)


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-63 letters, digits, '_', '.', '-', "
            "starting with a letter or '_'"
        )
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    if "\x00" in password:
        raise InvalidInput("password must not contain NUL characters")
    return password


PG_AUTH_METHODS = ("scram", "md5", "password")


def check_pg_auth(method: str) -> str:
    if method not in PG_AUTH_METHODS:
        raise InvalidInput(
            f"invalid PostgreSQL auth method {method!r}: use one of {', '.join(PG_AUTH_METHODS)}"
        )
    return method


def _set_password(user: User, password: str, pg_auth: str) -> None:
    verifiers = make_verifiers(password)
    user.scram_verifier = verifiers.scram
    user.sha256_sha256 = verifiers.sha256_sha256
    user.sha1_sha1 = verifiers.sha1_sha1
    user.pg_auth = pg_auth
    # The md5 form is password-equivalent for PostgreSQL logins: kept only for users allowed md5.
    user.md5_verifier = pg_md5_verifier(user.name, password) if pg_auth == "md5" else None


@dataclass(frozen=True)
class UserView:
    name: str
    admin: bool
    active: bool
    groups: tuple[str, ...]
    pg_auth: str
    created_at: str


def _user_view(u: User) -> UserView:
    return UserView(
        name=u.name,
        admin=u.is_admin,
        active=u.is_active,
        groups=tuple(sorted(m.group.name for m in u.memberships)),
        pg_auth=u.pg_auth,
        created_at=audit.as_utc(u.created_at).isoformat(timespec="seconds"),
    )


@dataclass(frozen=True)
class UserLogin:
    """What a wire-protocol login needs to know about a user. Verifiers, never passwords."""

    name: str
    active: bool
    pg_auth: str
    scram_verifier: str = field(repr=False)
    sha256_sha256: bytes = field(repr=False)
    sha1_sha1: bytes = field(repr=False)
    md5_verifier: str | None = field(repr=False)


@dataclass(frozen=True)
class GroupView:
    name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class SourceSpec:
    """What an operator gives to register a source (passwords travel separately)."""

    name: str
    engine: Engine
    host: str
    port: int
    database: str
    read_user: str
    write_user: str | None = None
    tls: UpstreamTLS | None = None  # None: verify-full when a CA bundle is given, else prefer
    tls_ca_pem: str | None = None  # PEM CA bundle for verify-ca / verify-full
    pool_size: int = 10
    pool_timeout_seconds: float = 10.0
    pool_mode: str | None = None  # POOL_MODES; None: the engine's default (default_pool_mode)
    approvals_required: int = 1
    ddl_approvals_required: int | None = None
    block_ddl: bool = False
    request_ttl_seconds: int = 24 * 3600
    hold_wait_seconds: int = 0
    allowed_schemas: tuple[str, ...] | None = None
    trusted_functions: tuple[str, ...] = ()


# What `Catalog.update_source` may change; name and engine are fixed for the life of a source.
MUTABLE_SOURCE_FIELDS = frozenset(
    {
        "host",
        "port",
        "database",
        "read_user",
        "read_password",
        "write_user",
        "write_password",
        "tls",
        "tls_ca_pem",
        "pool_size",
        "pool_timeout_seconds",
        "pool_mode",
        "approvals_required",
        "ddl_approvals_required",
        "block_ddl",
        "request_ttl_seconds",
        "hold_wait_seconds",
        "allowed_schemas",
        "trusted_functions",
    }
)
TLS_MODE_WORDS = ", ".join(t.value for t in UpstreamTLS)
POOL_MODES = ("transaction", "session")


def default_pool_mode(engine: Engine) -> str:
    """New PostgreSQL sources pool by transaction; MySQL sources by session (transaction pooling
    is not built for MySQL yet: docs/pooling.md)."""
    return "transaction" if engine is Engine.POSTGRESQL else "session"


_SECRET_SOURCE_FIELDS = frozenset({"read_password", "write_password"})


def _check_source(row: Source) -> None:
    """Validate a source row's non-secret fields (after create or update), InvalidInput if wrong."""
    if not row.host or any(c.isspace() for c in row.host):
        raise InvalidInput(f"invalid host {row.host!r}")
    if not 1 <= row.port <= 65535:
        raise InvalidInput(f"invalid port {row.port}: must be 1-65535")
    if not row.database:
        raise InvalidInput("database must not be empty")
    if not row.read_user:
        raise InvalidInput("the read user must not be empty")
    if not 1 <= row.pool_size <= 1000:
        raise InvalidInput(f"invalid pool size {row.pool_size}: must be 1-1000")
    if not 0 < row.pool_timeout_seconds <= 3600:
        raise InvalidInput(f"invalid pool timeout {row.pool_timeout_seconds:g}: must be 0-3600 seconds")
    if row.pool_mode not in POOL_MODES:
        raise InvalidInput(f"invalid pool mode {row.pool_mode!r}: use {' or '.join(POOL_MODES)}")
    if row.pool_mode == "transaction" and row.engine is Engine.MYSQL:
        raise InvalidInput(
            "transaction pooling is not available for MySQL sources yet: use pool mode session"
        )
    if not 1 <= row.approvals_required <= 100:
        raise InvalidInput(f"invalid approvals_required {row.approvals_required}: must be 1-100")
    if row.ddl_approvals_required is not None and not 1 <= row.ddl_approvals_required <= 100:
        raise InvalidInput(f"invalid ddl_approvals_required {row.ddl_approvals_required}: must be 1-100")
    if not 60 <= row.request_ttl_seconds <= 90 * 24 * 3600:
        raise InvalidInput(f"invalid request_ttl_seconds {row.request_ttl_seconds}: must be 60-7776000")
    if not 0 <= row.hold_wait_seconds <= 3600:
        raise InvalidInput(f"invalid hold_wait_seconds {row.hold_wait_seconds}: must be 0-3600")
    if row.allowed_schemas is not None:
        for schema in row.allowed_schemas:
            if not schema or len(schema) > 255:
                raise InvalidInput(f"invalid schema name {schema!r} in allowed_schemas")
    for function in row.trusted_functions or ():
        if not function or len(function) > 255 or any(c.isspace() for c in function):
            raise InvalidInput(f"invalid function name {function!r} in trusted_functions")
    if row.write_password_sealed is not None and row.write_user is None:
        raise InvalidInput("a write password needs a write user")
    _check_ca(row.tls_ca_pem)


def _check_ca(pem: str | None) -> None:
    if pem is None:
        return
    try:
        load_ca_bundle(pem)
    except ValueError as exc:
        raise InvalidInput(f"invalid TLS CA bundle: {exc}") from None


@dataclass(frozen=True)
class SourceView:
    name: str
    engine: str
    host: str
    port: int
    database: str
    read_user: str
    read_password_set: bool
    write_user: str | None
    write_password_set: bool
    tls: str
    tls_verified: bool  # the upstream's certificate is checked (verify-ca, verify-full)
    tls_warning: str | None  # said plainly when it is not
    tls_ca: tuple[str, ...]  # the stored CA bundle, one line per certificate
    pool_size: int
    pool_timeout_seconds: float
    pool_mode: str  # transaction | session (docs/pooling.md)
    approvals_required: int
    ddl_approvals_required: int | None
    block_ddl: bool
    request_ttl_seconds: int
    hold_wait_seconds: int
    allowed_schemas: tuple[str, ...] | None
    trusted_functions: tuple[str, ...]  # reads may call them besides the vetted built-ins
    # The last check of what the read login could do without QueryBase (`source test`):
    # {"checked_at", "login", "findings": [{"code", "severity", "what", "why"}], "error"}; None: never.
    boundary: dict[str, Any] | None = None
    grants: tuple[tuple[str, str], ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grants"] = [{"group": g, "level": lvl} for g, lvl in self.grants]
        return data


@dataclass(frozen=True)
class SourceCredentials:
    """Unsealed logins for connecting upstream. Never printed, logged or returned by the API."""

    view: SourceView
    read_password: str | None = field(repr=False)
    write_password: str | None = field(repr=False)
    tls_ca_pem: str | None  # public, but long: not part of the view


@dataclass(frozen=True)
class GrantView:
    group: str
    source: str
    level: str


def _source_view(src: Source, grants: Sequence[tuple[str, str]] = ()) -> SourceView:
    return SourceView(
        name=src.name,
        engine=src.engine.value,
        host=src.host,
        port=src.port,
        database=src.database,
        read_user=src.read_user,
        read_password_set=src.read_password_sealed is not None,
        write_user=src.write_user,
        write_password_set=src.write_password_sealed is not None,
        tls=src.tls.value,
        tls_verified=tls_verified(src.tls.value),
        tls_warning=tls_warning(src.tls.value, src.tls_ca_pem is not None),
        tls_ca=describe_ca_bundle(src.tls_ca_pem) if src.tls_ca_pem else (),
        pool_size=src.pool_size,
        pool_timeout_seconds=src.pool_timeout_seconds,
        pool_mode=src.pool_mode,
        approvals_required=src.approvals_required,
        ddl_approvals_required=src.ddl_approvals_required,
        block_ddl=src.block_ddl,
        request_ttl_seconds=src.request_ttl_seconds,
        hold_wait_seconds=src.hold_wait_seconds,
        allowed_schemas=tuple(src.allowed_schemas) if src.allowed_schemas is not None else None,
        trusted_functions=tuple(src.trusted_functions or ()),
        boundary=_boundary_view(src),
        grants=tuple(grants),
    )


def _boundary_view(src: Source) -> dict[str, Any] | None:
    if src.boundary_report is None or src.boundary_checked_at is None:
        return None
    checked_at = audit.as_utc(src.boundary_checked_at).isoformat(timespec="seconds")
    return {"checked_at": checked_at, **src.boundary_report}


def _seal_context(source: str, role: str) -> str:
    return f"source:{source}:{role}"


class Catalog:
    """Catalog operations over one store. `box` is needed only for source passwords."""

    def __init__(self, store: Store, box: SecretBox | None = None) -> None:
        self._store = store
        self._box = box

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise InvalidInput("the secret key is not loaded")
        return self._box

    async def audit(
        self,
        kind: str,
        *,
        actor: str | None,
        source: str | None = None,
        subject: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """Record one audit event in its own transaction (an action that changes no catalog row)."""
        async with self._store.write_session() as session, session.begin():
            await audit.append(session, kind, actor=actor, source=source, subject=subject, payload=payload)

    # users ---------------------------------------------------------------------------------

    async def _user(self, session: AsyncSession, name: str) -> User:
        user = await session.scalar(select(User).where(User.name == name))
        if user is None:
            raise NotFound(f"no user named {name!r}")
        return user

    async def add_user(
        self, name: str, password: str, *, admin: bool = False, pg_auth: str = "scram", actor: str | None
    ) -> None:
        check_name("user", name)
        user = User(name=name, is_admin=admin, is_active=True)
        _set_password(user, check_password(password), check_pg_auth(pg_auth))
        async with self._store.write_session() as session, session.begin():
            if await session.scalar(select(User.id).where(User.name == name)) is not None:
                raise AlreadyExists(f"user {name!r} already exists")
            session.add(user)
            await audit.append(
                session,
                "user.created",
                actor=actor,
                subject=name,
                payload={"admin": admin, "pg_auth": pg_auth},
            )

    async def user_login(self, name: str) -> UserLogin | None:
        async with self._store.session() as session:
            user = await session.scalar(select(User).where(User.name == name))
            if user is None:
                return None
            return UserLogin(
                user.name,
                user.is_active,
                user.pg_auth,
                user.scram_verifier,
                user.sha256_sha256,
                user.sha1_sha1,
                user.md5_verifier,
            )

    async def user_exists(self, name: str) -> bool:
        async with self._store.session() as session:
            return await session.scalar(select(User.id).where(User.name == name)) is not None

    async def list_users(self) -> list[UserView]:
        async with self._store.session() as session:
            users = (
                await session.scalars(
                    select(User)
                    .options(selectinload(User.memberships).selectinload(Membership.group))
                    .order_by(User.name)
                )
            ).all()
            return [_user_view(u) for u in users]

    async def set_password(
        self, name: str, password: str, *, pg_auth: str | None = None, actor: str | None
    ) -> None:
        check_password(password)
        async with self._store.write_session() as session, session.begin():
            user = await self._user(session, name)
            method = check_pg_auth(pg_auth) if pg_auth is not None else user.pg_auth
            _set_password(user, password, method)
            user.password_changed_at = utcnow()
            await audit.append(
                session, "user.password_changed", actor=actor, subject=name, payload={"pg_auth": method}
            )

    async def get_user(self, name: str) -> UserView:
        async with self._store.session() as session:
            user = await session.scalar(
                select(User)
                .options(selectinload(User.memberships).selectinload(Membership.group))
                .where(User.name == name)
            )
            if user is None:
                raise NotFound(f"no user named {name!r}")
            return _user_view(user)

    async def _other_active_admins(self, session: AsyncSession, user: User) -> int:
        count = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.is_admin.is_(True), User.is_active.is_(True), User.id != user.id)
        )
        return int(count or 0)

    async def update_user(
        self,
        name: str,
        *,
        password: str | None = None,
        pg_auth: str | None = None,
        active: bool | None = None,
        admin: bool | None = None,
        actor: str | None,
    ) -> UserView:
        """Change a user's password (and PostgreSQL auth method), active or admin flag at once.

        One audit event per kind of change, all in one transaction. Refuses to leave the catalog
        without an active admin (disabling or demoting the last one).
        """
        if password is not None:
            check_password(password)
        if pg_auth is not None:
            check_pg_auth(pg_auth)
        async with self._store.write_session() as session, session.begin():
            user = await self._user(session, name)
            losing_admin = user.is_admin and user.is_active and (active is False or admin is False)
            if losing_admin and not await self._other_active_admins(session, user):
                raise InvalidInput(f"user {name!r} is the last active admin; make another admin first")
            if password is not None:
                _set_password(user, password, pg_auth or user.pg_auth)
                user.password_changed_at = utcnow()
                await audit.append(
                    session,
                    "user.password_changed",
                    actor=actor,
                    subject=name,
                    payload={"pg_auth": user.pg_auth},
                )
            elif pg_auth is not None and pg_auth != user.pg_auth:
                if pg_auth == "md5":
                    raise InvalidInput(
                        "switching to md5 needs the password (the md5 verifier is made from it)"
                    )
                user.pg_auth, user.md5_verifier = pg_auth, None
                await audit.append(
                    session, "user.pg_auth_changed", actor=actor, subject=name, payload={"pg_auth": pg_auth}
                )
            if active is not None and active != user.is_active:
                user.is_active = active
                kind = "user.enabled" if active else "user.disabled"
                await audit.append(session, kind, actor=actor, subject=name)
            if admin is not None and admin != user.is_admin:
                user.is_admin = admin
                await audit.append(
                    session, "user.admin_changed", actor=actor, subject=name, payload={"admin": admin}
                )
        return await self.get_user(name)

    async def remove_user(self, name: str, *, actor: str | None) -> None:
        """Delete a user with their memberships and API tokens. Users with change requests or
        reviews cannot be deleted (their history would lose its author): disable them instead."""
        async with self._store.write_session() as session, session.begin():
            user = await self._user(session, name)
            if user.is_admin and user.is_active and not await self._other_active_admins(session, user):
                raise InvalidInput(f"user {name!r} is the last active admin; make another admin first")
            await session.delete(user)
            try:
                await session.flush()
            except IntegrityError:
                raise InvalidInput(
                    f"user {name!r} has change requests or reviews; disable the user instead"
                ) from None
            await audit.append(session, "user.removed", actor=actor, subject=name)

    async def access(self, user_name: str) -> dict[str, tuple[Level | None, bool]]:
        """Per source: (effective data level or None, may approve) of a user, over all groups."""
        async with self._store.session() as session:
            rows = await session.execute(
                select(Source.name, Grant.level)
                .join(Grant.source)
                .join(Membership, Membership.group_id == Grant.group_id)
                .join(User, User.id == Membership.user_id)
                .where(User.name == user_name)
            )
            held: dict[str, set[Level]] = {}
            for source, level in rows:
                held.setdefault(source, set()).add(level)
        result: dict[str, tuple[Level | None, bool]] = {}
        for source in sorted(held):
            data = [lvl for lvl in _DATA_LEVELS if lvl in held[source]]
            result[source] = (data[-1] if data else None), Level.APPROVE in held[source]
        return result

    async def set_active(self, name: str, active: bool, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            user = await self._user(session, name)
            user.is_active = active
            kind = "user.enabled" if active else "user.disabled"
            await audit.append(session, kind, actor=actor, subject=name)

    # groups --------------------------------------------------------------------------------

    async def _group(self, session: AsyncSession, name: str) -> Group:
        group = await session.scalar(select(Group).where(Group.name == name))
        if group is None:
            raise NotFound(f"no group named {name!r}")
        return group

    async def add_group(self, name: str, *, actor: str | None) -> None:
        check_name("group", name)
        async with self._store.write_session() as session, session.begin():
            if await session.scalar(select(Group.id).where(Group.name == name)) is not None:
                raise AlreadyExists(f"group {name!r} already exists")
            session.add(Group(name=name))
            await audit.append(session, "group.created", actor=actor, subject=name)

    async def get_group(self, name: str) -> GroupView:
        async with self._store.session() as session:
            group = await session.scalar(
                select(Group)
                .options(selectinload(Group.memberships).selectinload(Membership.user))
                .where(Group.name == name)
            )
            if group is None:
                raise NotFound(f"no group named {name!r}")
            return GroupView(group.name, tuple(sorted(m.user.name for m in group.memberships)))

    async def remove_group(self, name: str, *, actor: str | None) -> None:
        """Delete a group with its memberships and grants."""
        async with self._store.write_session() as session, session.begin():
            group = await self._group(session, name)
            await session.delete(group)
            await session.flush()
            await audit.append(session, "group.removed", actor=actor, subject=name)

    async def list_groups(self) -> list[GroupView]:
        async with self._store.session() as session:
            groups = (
                await session.scalars(
                    select(Group)
                    .options(selectinload(Group.memberships).selectinload(Membership.user))
                    .order_by(Group.name)
                )
            ).all()
            return [GroupView(g.name, tuple(sorted(m.user.name for m in g.memberships))) for g in groups]

    async def add_member(self, group_name: str, user_name: str, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            group = await self._group(session, group_name)
            user = await self._user(session, user_name)
            existing = await session.get(Membership, (group.id, user.id))
            if existing is not None:
                raise AlreadyExists(f"user {user_name!r} is already a member of {group_name!r}")
            session.add(Membership(group_id=group.id, user_id=user.id))
            await audit.append(
                session,
                "group.member_added",
                actor=actor,
                subject=group_name,
                payload={"user": user_name},
            )

    async def remove_member(self, group_name: str, user_name: str, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            group = await self._group(session, group_name)
            user = await self._user(session, user_name)
            result = await session.execute(
                delete(Membership).where(Membership.group_id == group.id, Membership.user_id == user.id)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"user {user_name!r} is not a member of {group_name!r}")
            await audit.append(
                session,
                "group.member_removed",
                actor=actor,
                subject=group_name,
                payload={"user": user_name},
            )

    # sources -------------------------------------------------------------------------------

    async def _source(self, session: AsyncSession, name: str) -> Source:
        source = await session.scalar(select(Source).where(Source.name == name))
        if source is None:
            raise NotFound(f"no source named {name!r}")
        return source

    async def add_source(
        self,
        spec: SourceSpec,
        *,
        read_password: str | None,
        write_password: str | None,
        actor: str | None,
    ) -> SourceView:
        check_name("source", spec.name)
        if write_password is not None and spec.write_user is None:
            raise InvalidInput("a write password needs --write-user")
        box = self._require_box()
        tls = spec.tls or (UpstreamTLS.VERIFY_FULL if spec.tls_ca_pem else UpstreamTLS.PREFER)
        row = Source(
            name=spec.name,
            engine=spec.engine,
            host=spec.host,
            port=spec.port,
            database=spec.database,
            read_user=spec.read_user,
            read_password_sealed=(
                box.seal(read_password, _seal_context(spec.name, "read")) if read_password else None
            ),
            write_user=spec.write_user,
            write_password_sealed=(
                box.seal(write_password, _seal_context(spec.name, "write")) if write_password else None
            ),
            tls=tls,
            tls_ca_pem=spec.tls_ca_pem,
            pool_size=spec.pool_size,
            pool_timeout_seconds=spec.pool_timeout_seconds,
            pool_mode=spec.pool_mode or default_pool_mode(spec.engine),
            approvals_required=spec.approvals_required,
            ddl_approvals_required=spec.ddl_approvals_required,
            block_ddl=spec.block_ddl,
            request_ttl_seconds=spec.request_ttl_seconds,
            hold_wait_seconds=spec.hold_wait_seconds,
            allowed_schemas=list(spec.allowed_schemas) if spec.allowed_schemas is not None else None,
            trusted_functions=list(spec.trusted_functions) or None,
        )
        _check_source(row)
        async with self._store.write_session() as session, session.begin():
            if await session.scalar(select(Source.id).where(Source.name == spec.name)) is not None:
                raise AlreadyExists(f"source {spec.name!r} already exists")
            session.add(row)
            await audit.append(
                session,
                "source.created",
                actor=actor,
                source=spec.name,
                subject=spec.name,
                payload={
                    "engine": spec.engine.value,
                    "host": spec.host,
                    "port": spec.port,
                    "database": spec.database,
                    "read_user": spec.read_user,
                    "write_user": spec.write_user,
                    "tls": tls.value,
                    "tls_ca": list(describe_ca_bundle(spec.tls_ca_pem)) if spec.tls_ca_pem else None,
                    "pool_size": spec.pool_size,
                    "pool_mode": row.pool_mode,
                    "approvals_required": spec.approvals_required,
                    "ddl_approvals_required": spec.ddl_approvals_required,
                    "block_ddl": spec.block_ddl,
                    "request_ttl_seconds": spec.request_ttl_seconds,
                    "hold_wait_seconds": spec.hold_wait_seconds,
                    "allowed_schemas": list(spec.allowed_schemas)
                    if spec.allowed_schemas is not None
                    else None,
                    "trusted_functions": list(spec.trusted_functions),
                },
            )
        return _source_view(row)

    async def update_source(self, name: str, changes: Mapping[str, Any], *, actor: str | None) -> SourceView:
        """Change some of MUTABLE_SOURCE_FIELDS of a source in one audited transaction.

        `read_password` / `write_password`: a string sets the password, None clears it. Clearing
        `write_user` clears the write password too. The audit event names the changed fields and
        their new values, except passwords, which appear only as "set" or "cleared".
        """
        unknown = set(changes) - MUTABLE_SOURCE_FIELDS
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))} of a source")
        box = self._require_box() if _SECRET_SOURCE_FIELDS & set(changes) else None
        async with self._store.write_session() as session, session.begin():
            src = await self._source(session, name)
            recorded: dict[str, Any] = {}
            for key, value in changes.items():
                if key in _SECRET_SOURCE_FIELDS:
                    role = key.removesuffix("_password")
                    sealed = box.seal(value, _seal_context(name, role)) if box and value else None
                    setattr(src, f"{role}_password_sealed", sealed)
                    recorded[key] = "set" if sealed else "cleared"
                    continue
                if key == "tls":
                    try:
                        value = UpstreamTLS(value)
                    except ValueError:
                        raise InvalidInput(f"invalid tls mode {value!r}: use {TLS_MODE_WORDS}") from None
                elif key == "tls_ca_pem":
                    _check_ca(value)
                    src.tls_ca_pem = value
                    recorded["tls_ca"] = list(describe_ca_bundle(value)) if value else "cleared"
                    continue
                elif key == "allowed_schemas" and value is not None:
                    value = list(value)
                elif key == "trusted_functions":
                    value = sorted(set(value or ())) or None
                setattr(src, key, value)
                recorded[key] = value.value if isinstance(value, UpstreamTLS) else value
            if changes.get("tls_ca_pem") and "tls" not in changes and not tls_verified(src.tls.value):
                # A CA given without a mode means "verify with it" (the default where a CA is given).
                src.tls = UpstreamTLS.VERIFY_FULL
                recorded["tls"] = src.tls.value
            clears_write_user = "write_user" in changes and changes["write_user"] is None
            if clears_write_user and "write_password" not in changes and src.write_password_sealed:
                src.write_password_sealed = None
                recorded["write_password"] = "cleared"  # noqa: S105 - a status word
            _check_source(src)
            await audit.append(
                session, "source.updated", actor=actor, source=name, subject=name, payload=recorded
            )
            await session.flush()
            return _source_view(src, await self._grants_of(session, src.id))

    async def _grants_of(self, session: AsyncSession, source_id: int) -> list[tuple[str, str]]:
        rows = await session.execute(
            select(Group.name, Grant.level)
            .join(Grant.group)
            .where(Grant.source_id == source_id)
            .order_by(Group.name, Grant.level)
        )
        return [(g, lvl.value) for g, lvl in rows]

    async def list_sources(self) -> list[SourceView]:
        async with self._store.session() as session:
            rows = (await session.scalars(select(Source).order_by(Source.name))).all()
            return [_source_view(s) for s in rows]

    async def get_source(self, name: str) -> SourceView:
        async with self._store.session() as session:
            src = await self._source(session, name)
            return _source_view(src, await self._grants_of(session, src.id))

    async def source_credentials(self, name: str) -> SourceCredentials:
        box = self._require_box()
        async with self._store.session() as session:
            src = await self._source(session, name)
            read_pw = (
                box.open(src.read_password_sealed, _seal_context(name, "read"))
                if src.read_password_sealed
                else None
            )
            write_pw = (
                box.open(src.write_password_sealed, _seal_context(name, "write"))
                if src.write_password_sealed
                else None
            )
            return SourceCredentials(_source_view(src), read_pw, write_pw, src.tls_ca_pem)

    async def record_source_test(
        self,
        name: str,
        logins: Mapping[str, bool],
        boundary: Mapping[str, Any],
        *,
        actor: str | None,
    ) -> SourceView:
        """Keep what one `source test` found, and audit it (`source.tested`).

        `logins`: role → whether it logged in. `boundary`: the read login's findings
        ({"login", "findings", "error"}); it replaces the stored one only when the read login
        logged in, so a passing network failure does not erase the last real finding.
        """
        async with self._store.write_session() as session, session.begin():
            src = await self._source(session, name)
            if logins.get("read"):
                src.boundary_report = dict(boundary)
                src.boundary_checked_at = utcnow()
            findings = boundary.get("findings") or []
            await audit.append(
                session,
                "source.tested",
                actor=actor,
                source=name,
                subject=name,
                payload={
                    "ok": all(logins.values()),
                    "logins": dict(logins),
                    "boundary": {
                        "login": boundary.get("login"),
                        "findings": [f"{f['severity']}:{f['code']}" for f in findings],
                        "error": boundary.get("error"),
                    },
                },
            )
            await session.flush()
            return _source_view(src, await self._grants_of(session, src.id))

    async def remove_source(self, name: str, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            src = await self._source(session, name)
            await session.delete(src)
            try:
                await session.flush()
            except IntegrityError:
                raise InvalidInput(
                    f"source {name!r} has change requests; it cannot be removed while they exist"
                ) from None
            await audit.append(session, "source.removed", actor=actor, source=name, subject=name)

    # grants --------------------------------------------------------------------------------

    async def grant(self, group_name: str, source_name: str, level: Level, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            group = await self._group(session, group_name)
            src = await self._source(session, source_name)
            existing = await session.scalar(
                select(Grant.id).where(
                    Grant.group_id == group.id, Grant.source_id == src.id, Grant.level == level
                )
            )
            if existing is not None:
                raise AlreadyExists(f"group {group_name!r} already has {level.value} on {source_name!r}")
            session.add(Grant(group_id=group.id, source_id=src.id, level=level))
            await audit.append(
                session,
                "grant.added",
                actor=actor,
                source=source_name,
                subject=group_name,
                payload={"level": level.value},
            )

    async def revoke(self, group_name: str, source_name: str, level: Level, *, actor: str | None) -> None:
        async with self._store.write_session() as session, session.begin():
            group = await self._group(session, group_name)
            src = await self._source(session, source_name)
            result = await session.execute(
                delete(Grant).where(
                    Grant.group_id == group.id, Grant.source_id == src.id, Grant.level == level
                )
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"group {group_name!r} has no {level.value} grant on {source_name!r}")
            await audit.append(
                session,
                "grant.revoked",
                actor=actor,
                source=source_name,
                subject=group_name,
                payload={"level": level.value},
            )

    async def list_grants(self) -> list[GrantView]:
        async with self._store.session() as session:
            rows = await session.execute(
                select(Group.name, Source.name, Grant.level)
                .join(Grant.group)
                .join(Grant.source)
                .order_by(Source.name, Group.name, Grant.level)
            )
            return [GrantView(g, s, lvl.value) for g, s, lvl in rows]

    async def levels(self, user_name: str, source_name: str) -> tuple[Level | None, bool]:
        """(effective data level or None, may approve) of an active user on a source."""
        async with self._store.session() as session:
            rows = await session.scalars(
                select(Grant.level)
                .join(Grant.source)
                .join(Membership, Membership.group_id == Grant.group_id)
                .join(User, User.id == Membership.user_id)
                .where(User.name == user_name, User.is_active.is_(True), Source.name == source_name)
            )
            held = set(rows)
        data = [lvl for lvl in _DATA_LEVELS if lvl in held]
        return (data[-1] if data else None), Level.APPROVE in held
