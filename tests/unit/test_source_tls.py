"""A source's upstream TLS settings in the catalog (modes, the stored CA bundle, what `show` says)
and the client contexts built from them."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from proxy.errors import InvalidInput
from proxy.store.catalog import Catalog, SourceSpec
from proxy.store.crypto import SecretBox
from proxy.store.db import Store
from proxy.store.models import Engine, UpstreamTLS
from proxy.tlsfiles import describe_ca_bundle, tls_required, upstream_context
from proxy.upstream.base import upstream_target


def _ca_pem(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA = _ca_pem("Unit CA")
OTHER = _ca_pem("Other CA, Inc.")


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def catalog(store: Store) -> Catalog:
    return Catalog(store, SecretBox(bytes(range(32))))


def spec(name: str = "shop", **fields: object) -> SourceSpec:
    base: dict[str, object] = {
        "name": name,
        "engine": Engine.POSTGRESQL,
        "host": "db.internal",
        "port": 5432,
        "database": "shop",
        "read_user": "reader",
    }
    return SourceSpec(**{**base, **fields})  # type: ignore[arg-type]


async def add(catalog: Catalog, name: str = "shop", **fields: object) -> None:
    await catalog.add_source(spec(name, **fields), read_password="pw", write_password=None, actor="t")


async def test_default_is_prefer_and_said_to_be_unverified(catalog: Catalog) -> None:
    view = await catalog.add_source(spec(), read_password=None, write_password=None, actor="t")
    assert (view.tls, view.tls_verified, view.tls_ca) == ("prefer", False, ())
    assert view.tls_warning is not None
    assert view.tls_warning.startswith("NOT VERIFIED: encrypted only when the server offers TLS")


async def test_a_ca_without_a_mode_means_verify_full(catalog: Catalog, store: Store) -> None:
    await add(catalog, tls_ca_pem=CA)
    view = await catalog.get_source("shop")
    assert (view.tls, view.tls_verified, view.tls_warning) == ("verify-full", True, None)
    (line,) = view.tls_ca
    assert line.startswith("CN=Unit CA (sha256 ")
    # The PEM is stored as text (every host of a shared store reads the same bundle) and travels
    # in the credentials, never in the view.
    creds = await catalog.source_credentials("shop")
    assert creds.tls_ca_pem == CA
    assert "BEGIN CERTIFICATE" not in json.dumps(view.as_dict())
    target = upstream_target(creds, "read")
    assert (target.tls, target.tls_ca) == ("verify-full", CA)
    async with store.session() as session:
        stored = (await session.execute(text("SELECT tls, tls_ca_pem FROM sources"))).one()
    assert tuple(stored) == ("verify-full", CA)


async def test_an_explicit_mode_wins_over_the_default(catalog: Catalog) -> None:
    await add(catalog, tls=UpstreamTLS.REQUIRE, tls_ca_pem=CA)
    view = await catalog.get_source("shop")
    assert (view.tls, view.tls_verified) == ("require", False)
    assert view.tls_warning is not None
    assert view.tls_warning.endswith("(the stored CA bundle is not used in this mode)")


@pytest.mark.parametrize(
    "bundle", ["", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
async def test_a_bundle_that_is_not_pem_certificates_is_refused(catalog: Catalog, bundle: str) -> None:
    with pytest.raises(InvalidInput, match="invalid TLS CA bundle"):
        await add(catalog, tls_ca_pem=bundle)
    assert await catalog.list_sources() == []


async def test_update_with_a_ca_switches_to_verify_full_and_is_audited(
    catalog: Catalog, store: Store
) -> None:
    await add(catalog, tls=UpstreamTLS.REQUIRE)
    view = await catalog.update_source("shop", {"tls_ca_pem": CA + OTHER}, actor="t")
    assert view.tls == "verify-full"
    assert [line.split(" (")[0] for line in view.tls_ca] == ["CN=Unit CA", "CN=Other CA\\, Inc."]
    view = await catalog.update_source("shop", {"tls": "verify-ca"}, actor="t")
    assert (view.tls, len(view.tls_ca)) == ("verify-ca", 2)
    view = await catalog.update_source("shop", {"tls_ca_pem": None}, actor="t")
    assert (view.tls, view.tls_ca, view.tls_verified) == ("verify-ca", (), True)  # the system's CAs
    with pytest.raises(InvalidInput, match="invalid tls mode 'verify': use disable, prefer, require"):
        await catalog.update_source("shop", {"tls": "verify"}, actor="t")
    async with store.session() as session:
        rows = (
            await session.execute(
                text("SELECT payload FROM audit_events WHERE kind = 'source.updated' ORDER BY id")
            )
        ).all()
    payloads = [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]
    assert payloads[0]["tls"] == "verify-full"
    assert payloads[0]["tls_ca"][0].startswith("CN=Unit CA")
    assert payloads[2] == {"tls_ca": "cleared"}


def test_contexts_per_mode() -> None:
    for mode in ("prefer", "require"):
        context = upstream_context(mode, None)
        assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    verify_ca = upstream_context("verify-ca", CA)
    assert (verify_ca.verify_mode, verify_ca.check_hostname) == (ssl.CERT_REQUIRED, False)
    full = upstream_context("verify-full", CA)
    assert (full.verify_mode, full.check_hostname) == (ssl.CERT_REQUIRED, True)
    # Only the source's bundle is trusted, not the system's as well.
    assert [c["subject"] for c in full.get_ca_certs()] == [((("commonName", "Unit CA"),),)]
    assert upstream_context("verify-full", CA) is full  # cached per (mode, bundle)
    assert upstream_context("verify-full", OTHER) is not full
    system = upstream_context("verify-full", None)
    assert (system.verify_mode, system.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert [tls_required(m) for m in ("disable", "prefer", "require", "verify-ca", "verify-full")] == [
        False,
        False,
        True,
        True,
        True,
    ]


def test_describe_bundle() -> None:
    (line,) = describe_ca_bundle(CA)
    digest = line.split("sha256 ")[1].split("…")[0]
    assert len(digest.split(":")) == 8
    assert line.endswith(f"valid until {(dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).date()})")
