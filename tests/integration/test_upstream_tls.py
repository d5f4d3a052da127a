"""Upstream TLS verification: verify-ca / verify-full against real PostgreSQL and MariaDB servers
serving a certificate from a CA this module makes.

The servers' certificate names `localhost` only (no IP address), so the same server is the right
host as `localhost` and the wrong one as `127.0.0.1`; a second, unrelated CA stands for an
impersonator's. Every upstream path is checked: `source test` (the drivers), the read pool
(a client through the gateway), the write login (an approved change run by the executor) and
QueryBase's own upstream connection class as the executor uses it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.config import load_settings
from proxy.errors import UpstreamConnectError
from proxy.store.catalog import Catalog
from proxy.store.crypto import SecretBox, load_key
from proxy.store.db import Store
from proxy.upstream.base import UpstreamTarget, upstream_target
from proxy.upstream.mysql import UpstreamConnection as MyUpstream
from proxy.upstream.pg import UpstreamConnection as PgUpstream
from tests.support.changes import Api, held_id
from tests.support.localdb import MARIADB_PASSWORDS, PG_PASSWORDS, MariaDBServer, PostgresCluster
from tests.support.pgfront import Gateway, cli, listen_port, running_gateway, setup_items
from tests.support.querybase import run_cli_in_process

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA that signed the servers' certificate
    other_ca: Path  # an unrelated CA (an impersonator's)
    server_cert: Path  # SAN: DNS localhost only
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@contextlib.contextmanager
def _shared_dir(prefix: str) -> Iterator[Path]:
    """A directory PostgreSQL's `postgres` account can enter when the tests run as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with _shared_dir("querybase-certs-") as base:
        ca_key, ca = _make_ca("QueryBase test CA")
        _, other = _make_ca("Impostor CA")
        cert_pem, key_pem = _make_leaf(ca_key, ca)
        found = Certs(base / "ca.pem", base / "other-ca.pem", base / "server.crt", base / "server.key")
        found.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        found.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
        found.server_cert.write_bytes(cert_pem)
        found.server_key.write_bytes(key_pem)
        os.chmod(found.server_key, 0o600)
        yield found


@pytest.fixture(scope="module")
def tls_pg(certs: Certs) -> Iterator[PostgresCluster]:
    with (
        _shared_dir("querybase-tlspg-") as base,
        PostgresCluster(base / "pg", tls_files=(certs.server_cert, certs.server_key)) as cluster,
    ):
        setup_items(cluster)
        yield cluster


@pytest.fixture(scope="module")
def tls_mariadb(certs: Certs) -> Iterator[MariaDBServer]:
    with (
        _shared_dir("querybase-tlsmy-") as base,
        MariaDBServer(base / "my", tls_files=(certs.server_cert, certs.server_key)) as server,
    ):
        server.execute_sql("CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, name TEXT)")
        yield server


# Source name → (engine, host, extra `source add` options, CA file key or None).
PG_SOURCES = {
    "pg_full": ("localhost", ("--tls-ca", "ca")),  # no --tls: a CA given means verify-full
    "pg_full_ip": ("127.0.0.1", ("--tls", "verify-full", "--tls-ca", "ca")),
    "pg_ca_ip": ("127.0.0.1", ("--tls", "verify-ca", "--tls-ca", "ca")),
    "pg_wrong_ca": ("localhost", ("--tls", "verify-full", "--tls-ca", "other")),
    "pg_system": ("localhost", ("--tls", "verify-full")),  # the system's CAs do not know ours
    "pg_require": ("127.0.0.1", ("--tls", "require")),
}
MY_SOURCES = {name.replace("pg_", "my_"): spec for name, spec in PG_SOURCES.items()}


@pytest.fixture(scope="module")
def gateway(
    tls_pg: PostgresCluster,
    tls_mariadb: MariaDBServer,
    certs: Certs,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    files = {"ca": str(certs.ca), "other": str(certs.other_ca)}
    with running_gateway(tls_pg, tmp_path_factory.mktemp("qb-tls"), users=["alice", "bob", "carol"]) as gw:
        env = {
            "PG_READ": PG_PASSWORDS["qb_reader"],
            "PG_WRITE": PG_PASSWORDS["qb_scram"],
            "MY_READ": MARIADB_PASSWORDS["qb_reader"],
            "MY_WRITE": MARIADB_PASSWORDS["qb_native"],
        }
        for sources, engine, port, logins in (
            (PG_SOURCES, "postgresql", tls_pg.port, ("qb_reader", "PG_READ", "qb_scram", "PG_WRITE")),
            (MY_SOURCES, "mysql", tls_mariadb.port, ("qb_reader", "MY_READ", "qb_native", "MY_WRITE")),
        ):
            for name, (host, options) in sources.items():
                given = [files.get(o, o) for o in options]
                cli(gw.config, "source", "add", name, "--engine", engine, "--host", host,
                    "--port", str(port), "--database", "qbtest", "--user", logins[0],
                    "--password-env", logins[1], "--write-user", logins[2],
                    "--write-password-env", logins[3], *given, env=env)  # fmt: skip
                for group, level in (("readers", "read"), ("analysts", "propose"), ("approvers", "approve")):
                    cli(gw.config, "grant", group, name, level)
        yield gw


# ------------------------------------------------------------------------------- `source test`

# name → (login succeeds, a word of the one-line reason when it does not)
EXPECTED = {
    "full": (True, ""),
    "full_ip": (False, "IP address mismatch"),
    "ca_ip": (True, ""),
    "wrong_ca": (False, "unable to get local issuer certificate"),
    "system": (False, "unable to get local issuer certificate"),
    "require": (True, ""),
}


@pytest.mark.parametrize("engine", ["pg", "my"])
@pytest.mark.parametrize("case", list(EXPECTED))
def test_source_test_verifies_the_certificate(gateway: Gateway, engine: str, case: str) -> None:
    name = f"{engine}_{case}"
    ok, reason = EXPECTED[case]
    result = run_cli_in_process(gateway.config, "source", "test", name)
    lines = [
        line for line in result.stdout.splitlines() if line.startswith((f"{name} read ", f"{name} write "))
    ]
    assert len(lines) == 2, result.stdout  # read and write login, one line each
    if ok:
        assert result.returncode == 0, result.stdout
        assert all(": ok: " in line for line in lines), result.stdout
        return
    assert result.returncode == 1, result.stdout
    for line in lines:
        assert line.startswith(f"{name} "), line  # names the source
        assert "FAILED: the server's TLS certificate was refused (verify-full)" in line, line
        assert reason in line, line


def test_source_show_says_whether_tls_is_verified(gateway: Gateway, certs: Certs) -> None:
    full = run_cli_in_process(gateway.config, "source", "show", "pg_full").stdout
    assert "tls:                    verify-full" in full
    assert "tls_verified:           yes" in full
    assert "tls_warning:            -" in full
    assert "CN=QueryBase test CA (sha256 " in full
    require = run_cli_in_process(gateway.config, "source", "show", "my_require").stdout
    assert "tls_verified:           no" in require
    assert "NOT VERIFIED: encrypted, but any certificate is accepted" in require
    api = Api.admin(gateway.serve.admin_url)
    shown = api.ok("GET", "/sources/pg_ca_ip")
    assert (shown["tls"], shown["tls_verified"], shown["tls_warning"]) == ("verify-ca", True, None)
    assert shown["tls_ca"][0].startswith("CN=QueryBase test CA")
    assert "tls_ca_pem" not in shown
    shown = api.ok("GET", "/sources/pg_require")
    assert (shown["tls_verified"], shown["tls_ca"]) == (False, [])
    assert shown["tls_warning"].startswith("NOT VERIFIED")


def test_api_create_with_a_ca_defaults_to_verify_full(
    gateway: Gateway, tls_pg: PostgresCluster, certs: Certs
) -> None:
    api = Api.admin(gateway.serve.admin_url)
    body = {
        "name": "api_tls",
        "engine": "postgresql",
        "host": "localhost",
        "port": tls_pg.port,
        "database": "qbtest",
        "read_user": "qb_reader",
        "read_password": PG_PASSWORDS["qb_reader"],
        "tls_ca_pem": certs.ca.read_text(),
    }
    created = api.ok("POST", "/sources", body)
    assert (created["tls"], created["tls_verified"]) == ("verify-full", True)
    tested = api.ok("POST", "/sources/api_tls/test")
    assert tested["ok"] is True, tested
    # Changing the bundle to the impostor's: the login is refused, one line naming the reason.
    api.ok("PATCH", "/sources/api_tls", {"tls_ca_pem": certs.other_ca.read_text()})
    tested = api.ok("POST", "/sources/api_tls/test")
    assert tested["ok"] is False
    assert "certificate was refused (verify-full)" in tested["logins"][0]["detail"]
    assert "\n" not in tested["logins"][0]["detail"]
    # Not a certificate: refused at the API, the source unchanged.
    bad = api.call("PATCH", "/sources/api_tls", {"tls_ca_pem": "hello"})
    assert bad.status_code == 422
    assert "invalid TLS CA bundle" in bad.text
    # Removing the bundle and dropping to require: now plainly not verified, and it connects.
    updated = api.ok("PATCH", "/sources/api_tls", {"tls_ca_pem": None, "tls": "require"})
    assert (updated["tls"], updated["tls_verified"], updated["tls_ca"]) == ("require", False, [])
    assert api.ok("POST", "/sources/api_tls/test")["ok"] is True


def test_cli_set_tls_ca_switches_to_verify_full(gateway: Gateway, certs: Certs) -> None:
    cli(gateway.config, "source", "add", "pg_later", "--engine", "postgresql", "--host", "localhost",
        "--port", str(gateway.pg.port), "--database", "qbtest", "--user", "qb_reader", "--no-password",
        "--tls", "require")  # fmt: skip
    out = cli(gateway.config, "source", "set", "pg_later", "--tls-ca", str(certs.ca))
    assert "tls is now verify-full" in out
    shown = cli(gateway.config, "source", "show", "pg_later", "--json")
    assert '"tls": "verify-full"' in shown
    bad = run_cli_in_process(gateway.config, "source", "set", "pg_later", "--tls-ca", str(certs.server_key))
    assert bad.returncode == 1
    assert "invalid TLS CA bundle" in bad.stderr


# ------------------------------------------------------------------------- the gateway's paths


def test_read_pool_connects_verified_postgresql(gateway: Gateway) -> None:
    with psycopg.connect(gateway.conninfo("carol", dbname="pg_full")) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)


@pytest.mark.parametrize(
    ("name", "reason"), [("pg_wrong_ca", "unable to get local issuer"), ("pg_full_ip", "mismatch")]
)
def test_read_pool_refuses_an_unverified_postgresql(gateway: Gateway, name: str, reason: str) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gateway.conninfo("carol", dbname=name))
    message = str(caught.value)
    assert f"of source '{name}'" in message
    assert "certificate was refused (verify-full)" in message
    assert reason in message


def _mysql(gateway: Gateway, user: str, source: str) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host=gateway.host,
        port=listen_port(gateway.config, "mysql"),
        user=user,
        password=gateway.passwords[user],
        database=source,
        connect_timeout=10,
    )


def test_read_pool_connects_verified_mariadb(gateway: Gateway) -> None:
    with _mysql(gateway, "carol", "my_full") as conn, conn.cursor() as cursor:
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        row = cursor.fetchone()
        assert row is not None
        assert row[1].startswith("TLS"), row


def test_read_pool_refuses_an_unverified_mariadb(gateway: Gateway) -> None:
    with pytest.raises(pymysql.err.OperationalError) as caught:
        _mysql(gateway, "carol", "my_wrong_ca")
    message = str(caught.value)
    assert "of source 'my_wrong_ca'" in message
    assert "certificate was refused (verify-full)" in message


@pytest.mark.parametrize("engine", ["pg", "my"])
def test_write_login_runs_an_approved_change_over_verified_tls(
    gateway: Gateway, tls_mariadb: MariaDBServer, engine: str
) -> None:
    source = f"{engine}_full"
    statement = "INSERT INTO items VALUES (902, 'verified')"
    if engine == "pg":
        with (
            pytest.raises(psycopg.Error) as caught,
            psycopg.connect(gateway.conninfo("alice", dbname=source)) as conn,
        ):
            conn.execute(statement)
    else:
        with pytest.raises(pymysql.err.MySQLError) as caught, _mysql(gateway, "alice", source) as conn:
            conn.cursor().execute(statement)
    request_id = held_id(str(caught.value))
    bob = Api(gateway.serve.admin_url, "bob", gateway.passwords["bob"])
    bob.ok("POST", f"/requests/{request_id}/approve", {"comment": "over verified TLS"})
    final = bob.wait_final(request_id)
    assert final["status"] == "succeeded", final
    if engine == "pg":
        assert gateway.rows("SELECT name FROM items WHERE id = 902") == [["verified"]]
    else:
        assert tls_mariadb.execute_sql("SELECT name FROM items WHERE id = 902") == "verified\n"


async def _write_targets(gateway: Gateway, engine: str) -> tuple[UpstreamTarget, UpstreamTarget]:
    """The write targets of {engine}_full and {engine}_wrong_ca, read from the gateway's catalog."""
    settings = load_settings(gateway.config, {})
    store = Store(settings.store.url)
    try:
        catalog = Catalog(store, SecretBox(load_key(settings, {})))
        good = upstream_target(await catalog.source_credentials(f"{engine}_full"), "write")
        bad = upstream_target(await catalog.source_credentials(f"{engine}_wrong_ca"), "write")
    finally:
        await store.close()
    return good, bad


async def test_executor_write_targets_verify(gateway: Gateway) -> None:
    """The executor logs in with `upstream_target(creds, "write")` and these classes: the same
    verification as the pools, and the same one-line refusal."""
    for engine, upstream in (("pg", PgUpstream), ("my", MyUpstream)):
        good, bad = await _write_targets(gateway, engine)
        assert (good.tls, good.read_only) == ("verify-full", False)
        assert good.tls_ca is not None
        assert "BEGIN CERTIFICATE" in good.tls_ca
        conn = await upstream.connect(good, ())
        conn.close()
        with pytest.raises(UpstreamConnectError) as caught:
            await upstream.connect(bad, ())
        assert f"of source '{engine}_wrong_ca'" in caught.value.message
        assert "certificate was refused (verify-full)" in caught.value.message
        assert "unable to get local issuer certificate" in caught.value.message
