"""Catalog operations on users, groups, memberships, sources and grants, each audited.

The CLI and the admin API both call these; they validate input, raise the QueryBaseError subclass
that fits (NotFound, AlreadyExists, InvalidInput), and return plain frozen views that never hold a
password or a sealed secret.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from policies.types import Level
from proxy import audit
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
from proxy.store.verifiers import make_verifiers, pg_md5_verifier

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
    tls: UpstreamTLS = UpstreamTLS.PREFER
    pool_size: int = 10
    pool_timeout_seconds: float = 10.0


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
    pool_size: int
    pool_timeout_seconds: float
    approvals_required: int
    ddl_approvals_required: int | None
    block_ddl: bool
    request_ttl_seconds: int
    hold_wait_seconds: int
    allowed_schemas: tuple[str, ...] | None
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
        pool_size=src.pool_size,
        pool_timeout_seconds=src.pool_timeout_seconds,
        approvals_required=src.approvals_required,
        ddl_approvals_required=src.ddl_approvals_required,
        block_ddl=src.block_ddl,
        request_ttl_seconds=src.request_ttl_seconds,
        hold_wait_seconds=src.hold_wait_seconds,
        allowed_schemas=tuple(src.allowed_schemas) if src.allowed_schemas is not None else None,
        grants=tuple(grants),
    )


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
            return [
                UserView(
                    name=u.name,
                    admin=u.is_admin,
                    active=u.is_active,
                    groups=tuple(sorted(m.group.name for m in u.memberships)),
                    pg_auth=u.pg_auth,
                    created_at=audit.as_utc(u.created_at).isoformat(timespec="seconds"),
                )
                for u in users
            ]

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
        if not spec.host or any(c.isspace() for c in spec.host):
            raise InvalidInput(f"invalid host {spec.host!r}")
        if not 1 <= spec.port <= 65535:
            raise InvalidInput(f"invalid port {spec.port}: must be 1-65535")
        if not spec.database:
            raise InvalidInput("database must not be empty")
        if not spec.read_user:
            raise InvalidInput("the read user must not be empty")
        if not 1 <= spec.pool_size <= 1000:
            raise InvalidInput(f"invalid pool size {spec.pool_size}: must be 1-1000")
        if not 0 < spec.pool_timeout_seconds <= 3600:
            raise InvalidInput(f"invalid pool timeout {spec.pool_timeout_seconds:g}: must be 0-3600 seconds")
        if write_password is not None and spec.write_user is None:
            raise InvalidInput("a write password needs --write-user")
        box = self._require_box()
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
            tls=spec.tls,
            pool_size=spec.pool_size,
            pool_timeout_seconds=spec.pool_timeout_seconds,
        )
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
                    "tls": spec.tls.value,
                    "pool_size": spec.pool_size,
                },
            )
        return _source_view(row)

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
            return SourceCredentials(_source_view(src), read_pw, write_pw)

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
