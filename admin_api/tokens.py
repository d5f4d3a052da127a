"""Admin API credentials: password logins, short-lived JWTs and long-lived API tokens.

A JWT (HS256) is signed with a key derived from the store's secret key by HKDF with a fixed label,
so the secret key itself never signs anything and one key file serves every QueryBase process of
a deployment. An API token is `qbt_` + 32 random bytes (base64url); only its SHA-256 is stored.
Either kind of bearer is checked against the user row on every request: a disabled, deleted or
demoted user loses access at once, not when the token expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select, update

from proxy.audit import log as audit
from proxy.auth.verifiers import ScramVerifier, make_scram_verifier, scram_verify_password
from proxy.errors import NotFound, Unauthorized
from proxy.store.db import Store
from proxy.store.models import ApiToken, User, utcnow

ISSUER = "querybase"
AUDIENCE = "querybase-admin"
ALGORITHM = "HS256"
API_TOKEN_PREFIX = "qbt_"  # noqa: S105 - a prefix, not a secret
_SIGNING_LABEL = b"querybase admin-api jwt hs256 v1"
LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used_at is written at most once a minute


@dataclass(frozen=True)
class Principal:
    """Who is calling, as found in the store for this request."""

    user_id: int
    name: str
    is_admin: bool


def derive_signing_key(secret_key: bytes) -> bytes:
    """The JWT signing key: HKDF-SHA256 of the store secret key with a fixed label."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SIGNING_LABEL).derive(secret_key)


def mint_jwt(signing_key: bytes, user: Principal, ttl_seconds: int) -> str:
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": user.name,
        "uid": user.user_id,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM)


def decode_jwt(signing_key: bytes, token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            signing_key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["sub", "iat", "exp", "iss", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the access token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid access token: {exc}") from None
    return claims


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------- passwords


@lru_cache(maxsize=1)
def _decoy_verifier() -> ScramVerifier:
    # Unknown users cost the same PBKDF2 work as known ones, so timing does not reveal names.
    return make_scram_verifier(secrets.token_urlsafe(16))


async def check_password(store: Store, name: str, password: str) -> tuple[Principal | None, str]:
    """(the user, "") if the password is right and the user active, else (None, reason for the audit)."""
    async with store.session() as session:
        row = (
            await session.execute(
                select(User.id, User.name, User.is_admin, User.is_active, User.scram_verifier).where(
                    User.name == name
                )
            )
        ).first()
    verifier = ScramVerifier.decode(row.scram_verifier) if row is not None else _decoy_verifier()
    ok = await asyncio.to_thread(scram_verify_password, verifier, password)
    if row is None:
        return None, "unknown user"
    if not ok:
        return None, "wrong password"
    if not row.is_active:
        return None, "user disabled"
    return Principal(row.id, row.name, row.is_admin), ""


# ---------------------------------------------------------------------------- bearer checks


async def _active_user(store: Store, user_id: int) -> Principal | None:
    async with store.session() as session:
        row = (
            await session.execute(
                select(User.id, User.name, User.is_admin, User.is_active).where(User.id == user_id)
            )
        ).first()
    if row is None or not row.is_active:
        return None
    return Principal(row.id, row.name, row.is_admin)


async def authenticate(store: Store, signing_key: bytes, bearer: str) -> Principal:
    """The principal behind a bearer credential (JWT or API token), or Unauthorized."""
    if bearer.startswith(API_TOKEN_PREFIX):
        return await _authenticate_api_token(store, bearer)
    claims = decode_jwt(signing_key, bearer)
    uid = claims.get("uid")
    principal = await _active_user(store, uid) if isinstance(uid, int) else None
    if principal is None or principal.name != claims["sub"]:
        raise Unauthorized("the token's user no longer exists or is disabled")
    return principal


async def _authenticate_api_token(store: Store, token: str) -> Principal:
    async with store.session() as session:
        row = (
            await session.execute(
                select(
                    ApiToken.id,
                    ApiToken.user_id,
                    ApiToken.expires_at,
                    ApiToken.revoked_at,
                    ApiToken.last_used_at,
                ).where(ApiToken.token_hash == hash_api_token(token))
            )
        ).first()
    if row is None:
        raise Unauthorized("unknown API token")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("the API token has been revoked")
    if row.expires_at is not None and audit.as_utc(row.expires_at) <= now:
        raise Unauthorized("the API token has expired")
    principal = await _active_user(store, row.user_id)
    if principal is None:
        raise Unauthorized("the token's user no longer exists or is disabled")
    if row.last_used_at is None or now - audit.as_utc(row.last_used_at) >= LAST_USED_RESOLUTION:
        async with store.write_session() as session, session.begin():
            await session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return principal


# ------------------------------------------------------------------------------ API tokens


@dataclass(frozen=True)
class ApiTokenView:
    id: int
    name: str
    user: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _opt_utc(moment: datetime | None) -> datetime | None:
    return audit.as_utc(moment) if moment is not None else None


async def create_api_token(
    store: Store, *, user: str, name: str, expires_in_days: int | None, actor: str
) -> tuple[str, ApiTokenView]:
    """Mint a token for `user`; returns the token text (shown once) and its view. An unknown user
    is refused (NotFound) and the refusal audited, for every caller (API and CLI)."""
    token = new_api_token()
    now = utcnow()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days is not None else None
    async with store.write_session() as session, session.begin():
        user_id = await session.scalar(select(User.id).where(User.name == user))
        if user_id is not None:
            row = ApiToken(
                name=name,
                user_id=user_id,
                token_hash=hash_api_token(token),
                created_by=actor,
                created_at=now,
                expires_at=expires_at,
            )
            session.add(row)
            await session.flush()
            await audit.append(
                session,
                "api.token_created",
                actor=actor,
                subject=user,
                payload={"token_id": row.id, "name": name, "expires_at": _iso(expires_at)},
            )
    if user_id is None:
        refused = NotFound(f"no user named {user!r}")
        await audit_event(
            store,
            "api.token_create_failed",
            actor=actor,
            subject=user,
            payload={"name": name, "reason": refused.message},
        )
        raise refused
    return token, ApiTokenView(row.id, name, user, actor, now, expires_at, None, None)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


async def list_api_tokens(store: Store) -> list[ApiTokenView]:
    async with store.session() as session:
        rows = await session.execute(
            select(ApiToken, User.name).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id)
        )
        return [
            ApiTokenView(
                t.id,
                t.name,
                user,
                t.created_by,
                audit.as_utc(t.created_at),
                _opt_utc(t.expires_at),
                _opt_utc(t.revoked_at),
                _opt_utc(t.last_used_at),
            )
            for t, user in rows
        ]


async def revoke_api_token(store: Store, token_id: int, *, actor: str) -> None:
    """Revoke a token; revoking one already revoked is a no-op that still succeeds. An unknown id
    is refused (NotFound) and the refusal audited."""
    async with store.write_session() as session, session.begin():
        row = (
            await session.execute(
                select(ApiToken, User.name)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.id == token_id)
            )
        ).first()
        if row is not None:
            token, user = row
            if token.revoked_at is None:
                token.revoked_at = utcnow()
            await audit.append(
                session,
                "api.token_revoked",
                actor=actor,
                subject=user,
                payload={"token_id": token_id, "name": token.name},
            )
            return
    refused = NotFound(f"no API token with id {token_id}")
    await audit_event(
        store,
        "api.token_revoke_failed",
        actor=actor,
        payload={"token_id": token_id, "reason": refused.message},
    )
    raise refused


async def audit_event(
    store: Store,
    kind: str,
    *,
    actor: str | None,
    subject: str | None = None,
    payload: dict[str, Any] | None = None,
) -> None:
    """One audit event in its own transaction (for failures, where there is no change to join)."""
    async with store.write_session() as session, session.begin():
        await audit.append(session, kind, actor=actor, subject=subject, payload=payload)
