"""TLS material: the self-signed certificate made at init, the listeners' SSLContext, the upstreams' one."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import Settings
from proxy.errors import ConfigError

CERT_VALIDITY_DAYS = 825


def generate_self_signed(cert_file: Path, key_file: Path, *, days: int = CERT_VALIDITY_DAYS) -> None:
    """Write a P-256 key (mode 0600) and a self-signed certificate for this host and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"QueryBase on {hostname or 'localhost'}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_file, key_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The listeners' SSLContext, or None when `tls.mode = "disable"`."""
    if settings.tls.mode == "disable":
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls.cert_file, settings.tls.key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"tls.cert_file/tls.key_file: cannot read {exc.filename}: {exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"tls.cert_file/tls.key_file: {settings.tls.cert_file} and {settings.tls.key_file} "
            f"are not a usable certificate and key: {exc}"
        ) from None
    return context


def upstream_context() -> ssl.SSLContext:
    """The client-side context for upstream databases: encrypted, certificate not verified.

    A source's `tls = require` means "encrypt" (like libpq's sslmode=require); verifying the
    upstream's certificate needs a per-source CA setting, which is not built yet.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
