"""Routes for sources (admin): the upstream databases. Passwords are write-only, never returned."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from admin_api.deps import AdminUser, Ctx
from proxy.errors import InvalidInput
from proxy.store.catalog import SourceSpec, SourceView
from proxy.store.models import Engine, UpstreamTLS
from proxy.upstream.probe import check_source

router = APIRouter(prefix="/sources", tags=["sources"])

DEFAULT_PORTS = {Engine.POSTGRESQL: 5432, Engine.MYSQL: 3306}
TLSMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]
_TLS_DOC = (
    "upstream TLS: disable, prefer, require (encrypted, certificate not verified), verify-ca "
    "(chains to tls_ca_pem, else the system's CAs), verify-full (and names the host); MySQL's "
    "VERIFY_CA / VERIFY_IDENTITY use the same words"
)
_TRUSTED_DOC = (
    "functions reads may call besides the vetted built-ins, as the classifier names them "
    "(`name`, or `schema.name` when called qualified); anything else a read calls is held or denied"
)
_POOL_MODE_DOC = (
    "transaction: clients share upstream connections between transactions; session: one upstream "
    "connection per client session (docs/pooling.md)"
)
PoolMode = Literal["transaction", "session"]
_CA_DOC = "PEM CA bundle (text) for verify-ca / verify-full; stored in the catalog, shown as a summary"
_WRITE_ONLY = "write-only: never returned"


class GrantOut(BaseModel):
    group: str
    level: str


class FindingOut(BaseModel):
    code: str = Field(description="stable identifier, e.g. table_write, superuser, global_privilege")
    severity: Literal["high", "medium", "low"]
    what: str
    why: str


class BoundaryOut(BaseModel):
    """What the read login could do without QueryBase (docs/source-boundary.md)."""

    checked_at: str | None = Field(default=None, description="when `source test` found it (UTC)")
    login: str
    findings: list[FindingOut] = Field(description="empty: the login could not write on its own")
    error: str | None = Field(description="the check could not run")


class SourceOut(BaseModel):
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
    tls_verified: bool = Field(description="whether the upstream's certificate is verified")
    tls_warning: str | None = Field(description="what is not protected when it is not verified")
    tls_ca: list[str] = Field(description="the stored CA bundle: one line per certificate")
    pool_size: int
    pool_timeout_seconds: float
    pool_mode: PoolMode = Field(description=_POOL_MODE_DOC)
    approvals_required: int
    ddl_approvals_required: int | None
    block_ddl: bool
    request_ttl_seconds: int
    hold_wait_seconds: int
    allowed_schemas: list[str] | None
    trusted_functions: list[str] = Field(description="functions reads may call besides vetted built-ins")
    boundary: BoundaryOut | None = Field(description="the last `test`'s finding; null: never tested")
    grants: list[GrantOut]

    @classmethod
    def of(cls, v: SourceView) -> SourceOut:
        return cls.model_validate(v.as_dict())


class SourceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    engine: Literal["postgresql", "mysql"]
    host: str = Field(min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535, description="default: 5432 or 3306 by engine")
    database: str = Field(min_length=1, max_length=255)
    read_user: str = Field(min_length=1, max_length=255)
    read_password: str | None = Field(default=None, max_length=1024, description=_WRITE_ONLY)
    write_user: str | None = Field(default=None, min_length=1, max_length=255)
    write_password: str | None = Field(default=None, max_length=1024, description=_WRITE_ONLY)
    tls: TLSMode | None = Field(
        default=None, description=_TLS_DOC + "; default: verify-full with tls_ca_pem, else prefer"
    )
    tls_ca_pem: str | None = Field(default=None, max_length=1_000_000, description=_CA_DOC)
    pool_size: int = Field(default=10, ge=1, le=1000)
    pool_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    pool_mode: PoolMode | None = Field(
        default=None, description=_POOL_MODE_DOC + "; default: transaction (PostgreSQL), session (MySQL)"
    )
    approvals_required: int = Field(default=1, ge=1, le=100)
    ddl_approvals_required: int | None = Field(default=None, ge=1, le=100)
    block_ddl: bool = False
    request_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=90 * 24 * 3600)
    hold_wait_seconds: int = Field(default=0, ge=0, le=3600)
    allowed_schemas: list[str] | None = None
    trusted_functions: list[str] = Field(default_factory=list, description=_TRUSTED_DOC)


class SourceUpdate(BaseModel):
    """Only the fields present change. `null` clears the nullable ones (write_user, passwords,
    ddl_approvals_required, allowed_schemas)."""

    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = Field(default=None, min_length=1, max_length=255)
    read_user: str | None = Field(default=None, min_length=1, max_length=255)
    read_password: str | None = Field(default=None, max_length=1024, description=_WRITE_ONLY)
    write_user: str | None = Field(default=None, min_length=1, max_length=255)
    write_password: str | None = Field(default=None, max_length=1024, description=_WRITE_ONLY)
    tls: TLSMode | None = Field(default=None, description=_TLS_DOC)
    tls_ca_pem: str | None = Field(
        default=None,
        max_length=1_000_000,
        description=_CA_DOC + "; null removes it; given without tls, tls becomes verify-full",
    )
    pool_size: int | None = Field(default=None, ge=1, le=1000)
    pool_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    pool_mode: PoolMode | None = Field(default=None, description=_POOL_MODE_DOC)
    approvals_required: int | None = Field(default=None, ge=1, le=100)
    ddl_approvals_required: int | None = Field(default=None, ge=1, le=100)
    block_ddl: bool | None = None
    request_ttl_seconds: int | None = Field(default=None, ge=60, le=90 * 24 * 3600)
    hold_wait_seconds: int | None = Field(default=None, ge=0, le=3600)
    allowed_schemas: list[str] | None = None
    trusted_functions: list[str] | None = Field(default=None, description=_TRUSTED_DOC)


_NULLABLE = frozenset(
    {
        "read_password",
        "write_user",
        "write_password",
        "ddl_approvals_required",
        "allowed_schemas",
        "tls_ca_pem",
        "trusted_functions",
    }
)


class LoginResultOut(BaseModel):
    role: str
    user: str
    ok: bool
    detail: str = Field(description="the server version when ok, else the driver's error")


class SourceTestOut(BaseModel):
    ok: bool = Field(description="every login succeeded (findings do not change it)")
    logins: list[LoginResultOut]
    boundary: BoundaryOut


@router.get("")
async def list_sources(ctx: Ctx, _admin: AdminUser) -> list[SourceOut]:
    return [SourceOut.of(s) for s in await ctx.catalog.list_sources()]


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_source(body: SourceCreate, ctx: Ctx, admin: AdminUser) -> SourceOut:
    engine = Engine(body.engine)
    spec = SourceSpec(
        name=body.name,
        engine=engine,
        host=body.host,
        port=body.port if body.port is not None else DEFAULT_PORTS[engine],
        database=body.database,
        read_user=body.read_user,
        write_user=body.write_user,
        tls=UpstreamTLS(body.tls) if body.tls else None,
        tls_ca_pem=body.tls_ca_pem,
        pool_size=body.pool_size,
        pool_timeout_seconds=body.pool_timeout_seconds,
        pool_mode=body.pool_mode,
        approvals_required=body.approvals_required,
        ddl_approvals_required=body.ddl_approvals_required,
        block_ddl=body.block_ddl,
        request_ttl_seconds=body.request_ttl_seconds,
        hold_wait_seconds=body.hold_wait_seconds,
        allowed_schemas=tuple(body.allowed_schemas) if body.allowed_schemas is not None else None,
        trusted_functions=tuple(body.trusted_functions),
    )
    await ctx.catalog.add_source(
        spec, read_password=body.read_password, write_password=body.write_password, actor=admin.name
    )
    return SourceOut.of(await ctx.catalog.get_source(body.name))


@router.get("/{name}")
async def show_source(name: str, ctx: Ctx, _admin: AdminUser) -> SourceOut:
    return SourceOut.of(await ctx.catalog.get_source(name))


@router.patch("/{name}")
async def update_source(name: str, body: SourceUpdate, ctx: Ctx, admin: AdminUser) -> SourceOut:
    """Change some fields of a source; name and engine are fixed (remove and re-add to change them)."""
    changes: dict[str, Any] = {key: getattr(body, key) for key in body.model_fields_set}
    not_null = sorted(k for k, v in changes.items() if v is None and k not in _NULLABLE)
    if not_null:
        raise InvalidInput(f"{', '.join(not_null)}: may not be null")
    if not changes:
        raise InvalidInput("nothing to change: give at least one field")
    return SourceOut.of(await ctx.catalog.update_source(name, changes, actor=admin.name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_source(name: str, ctx: Ctx, admin: AdminUser) -> None:
    """Remove a source and its grants (refused while it has change requests)."""
    await ctx.catalog.remove_source(name, actor=admin.name)


@router.post("/{name}/test")
async def test_source(name: str, ctx: Ctx, admin: AdminUser) -> SourceTestOut:
    """Log in with the source's read and write logins, and check what the read login could do
    without QueryBase (kept as the source's `boundary`); 200 with ok=false when a login fails."""
    result = await check_source(await ctx.catalog.source_credentials(name))
    logins = {r.role: r.ok for r in result.logins}
    boundary = result.boundary.as_dict()
    await ctx.catalog.record_source_test(name, logins, boundary, actor=admin.name)
    return SourceTestOut(
        ok=all(logins.values()),
        logins=[LoginResultOut(role=r.role, user=r.user, ok=r.ok, detail=r.detail) for r in result.logins],
        boundary=BoundaryOut.model_validate(boundary),
    )
