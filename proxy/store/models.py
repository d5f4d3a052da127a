"""Catalog schema: SQLAlchemy 2 models for everything QueryBase keeps (DESIGN.md §1, §4, §6).

The Alembic migrations in `migrations/versions/` create exactly these tables; a test compares them.
Secrets are never columns of plain text: source passwords are sealed (`*_password_sealed`), user
passwords exist only as verifiers.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from policies.types import Level


def utcnow() -> datetime:
    return datetime.now(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
    }


class Engine(enum.StrEnum):
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"


class UpstreamTLS(enum.StrEnum):
    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"  # MySQL's VERIFY_CA
    VERIFY_FULL = "verify-full"  # MySQL's VERIFY_IDENTITY


class RequestStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class Decision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as VARCHAR + CHECK (not a native PG enum) so adding a value is a plain migration.
    return Enum(cls, name=name, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    scram_verifier: Mapped[str] = mapped_column(String(200))
    sha256_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    sha1_sha1: Mapped[bytes] = mapped_column(LargeBinary(20))
    # PostgreSQL client authentication: "scram" (default), "md5" (needs md5_verifier) or
    # "password" (cleartext, accepted only over TLS). MySQL logins do not depend on it.
    pg_auth: Mapped[str] = mapped_column(String(16), default="scram", server_default="scram")
    md5_verifier: Mapped[str | None] = mapped_column(String(35))
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="group", cascade="all, delete-orphan")
    grants: Mapped[list[Grant]] = relationship(back_populates="group", cascade="all, delete-orphan")


class Membership(Base):
    __tablename__ = "memberships"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[Group] = relationship(back_populates="memberships")
    user: Mapped[User] = relationship(back_populates="memberships")


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = (
        CheckConstraint("port > 0 AND port < 65536", name="port_range"),
        CheckConstraint("pool_size > 0", name="pool_size_positive"),
        CheckConstraint("approvals_required > 0", name="approvals_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    engine: Mapped[Engine] = mapped_column(_enum(Engine, "source_engine"))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    database: Mapped[str] = mapped_column(String(255))
    read_user: Mapped[str] = mapped_column(String(255))
    read_password_sealed: Mapped[str | None] = mapped_column(Text)
    write_user: Mapped[str | None] = mapped_column(String(255))
    write_password_sealed: Mapped[str | None] = mapped_column(Text)
    tls: Mapped[UpstreamTLS] = mapped_column(_enum(UpstreamTLS, "source_tls"), default=UpstreamTLS.PREFER)
    # The CA bundle (PEM text) the upstream's certificate must chain to in verify-ca/verify-full;
    # stored, not a path, so every QueryBase host of a shared store verifies the same way.
    tls_ca_pem: Mapped[str | None] = mapped_column(Text)
    pool_size: Mapped[int] = mapped_column(Integer, default=10)
    pool_timeout_seconds: Mapped[float] = mapped_column(Float, default=10.0)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    ddl_approvals_required: Mapped[int | None] = mapped_column(Integer)
    block_ddl: Mapped[bool] = mapped_column(Boolean, default=False)
    request_ttl_seconds: Mapped[int] = mapped_column(Integer, default=24 * 3600)
    hold_wait_seconds: Mapped[int] = mapped_column(Integer, default=0)
    allowed_schemas: Mapped[list[str] | None] = mapped_column(JSON)
    # Functions (as the classifier names them: `name` or `schema.name`) reads may call on this source
    # besides the vetted built-ins; NULL: none.
    trusted_functions: Mapped[list[str] | None] = mapped_column(JSON)
    # How clients share upstream connections (docs/pooling.md): "transaction" (a connection per
    # transaction) or "session" (one per client session). Sources made before 0007 keep "session".
    pool_mode: Mapped[str] = mapped_column(String(16), default="transaction")
    # The last `source test` of the read login's own privileges (proxy.upstream.probe.Boundary):
    # {"login", "findings": [{"code", "severity", "what", "why"}], "error"}, and when it ran.
    boundary_checked_at: Mapped[datetime | None] = mapped_column()
    boundary_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    grants: Mapped[list[Grant]] = relationship(back_populates="source", cascade="all, delete-orphan")


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (
        UniqueConstraint("group_id", "source_id", "level", name="uq_grants_group_source_level"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    level: Mapped[Level] = mapped_column(_enum(Level, "grant_level"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    group: Mapped[Group] = relationship(back_populates="grants")
    source: Mapped[Source] = relationship(back_populates="grants")


class ChangeRequest(Base):
    """A held write (DESIGN.md §4). `version` makes every state change a compare-and-set."""

    __tablename__ = "change_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="RESTRICT"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    status: Mapped[RequestStatus] = mapped_column(
        _enum(RequestStatus, "request_status"), default=RequestStatus.PENDING, index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    statement_text: Mapped[str] = mapped_column(Text)
    parameters: Mapped[list[Any] | None] = mapped_column(JSON)
    classification: Mapped[dict[str, Any]] = mapped_column(JSON)
    session_facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column()

    reviews: Mapped[list[Review]] = relationship(back_populates="request", cascade="all, delete-orphan")
    execution: Mapped[Execution | None] = relationship(back_populates="request")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("request_id", "reviewer_id", name="uq_reviews_request_reviewer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("change_requests.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    decision: Mapped[Decision] = mapped_column(_enum(Decision, "review_decision"))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    request: Mapped[ChangeRequest] = relationship(back_populates="reviews")


class Execution(Base):
    """One run of an approved request; `request_id` is unique, so a request runs at most once."""

    __tablename__ = "executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("change_requests.id", ondelete="CASCADE"), unique=True)
    executor: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[float | None] = mapped_column(Float)
    upstream_txid: Mapped[str | None] = mapped_column(String(64))
    upstream_xid: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str | None] = mapped_column(String(16))
    rows_affected: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    sqlstate: Mapped[str | None] = mapped_column(String(5))
    mysql_errno: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    returning_rows: Mapped[list[Any] | None] = mapped_column(JSON)

    request: Mapped[ChangeRequest] = relationship(back_populates="execution")


class ApiToken(Base):
    """A long-lived API token minted by an admin; only the SHA-256 of the token is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class NotificationDelivery(Base):
    """One attempt to deliver a change-request event to a webhook target."""

    __tablename__ = "notification_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("change_requests.id", ondelete="CASCADE"), index=True
    )
    event: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(63))
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | retrying | failed
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """Append-only, hash-chained: `hash` = SHA-256 over the canonical JSON including `prev_hash`."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str | None] = mapped_column(String(63))
    source: Mapped[str | None] = mapped_column(String(63))
    subject: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
