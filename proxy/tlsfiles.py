"""TLS material: the self-signed certificate made at init, the listeners' SSLContext, the upstreams' one."""

from __future__ import annotations

import datetime as dt
import functools
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


# A source's `tls` modes, libpq's names (DESIGN.md: "TLS when the source asks"). MySQL sources use
# the same words: verify-ca is MySQL's VERIFY_CA, verify-full its VERIFY_IDENTITY.
TLS_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
VERIFYING_MODES = frozenset({"verify-ca", "verify-full"})
ENCRYPTING_MODES = frozenset({"require", "verify-ca", "verify-full"})  # no TLS offered: refuse


def tls_required(mode: str) -> bool:
    """Whether a source in `mode` refuses an upstream that does not offer TLS."""
    return mode in ENCRYPTING_MODES


def tls_verified(mode: str) -> bool:
    """Whether the upstream's certificate is checked against a CA (and, verify-full, its name)."""
    return mode in VERIFYING_MODES


def tls_warning(mode: str, has_ca: bool = False) -> str | None:
    """What `source show` says about a source's TLS: None when the certificate is verified."""
    unused = " (the stored CA bundle is not used in this mode)" if has_ca else ""
    if mode == "disable":
        return "NOT ENCRYPTED: logins and results cross the network in the clear" + unused
    if mode == "prefer":
        return (
            "NOT VERIFIED: encrypted only when the server offers TLS, and any certificate is "
            "accepted, so anyone on the path can impersonate the database" + unused
        )
    if mode == "require":
        return (
            "NOT VERIFIED: encrypted, but any certificate is accepted, so anyone on the path can "
            "impersonate the database" + unused
        )
    return None


def load_ca_bundle(pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM CA bundle; ValueError (one line) when it holds none or is not PEM."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("not a PEM certificate bundle (no BEGIN CERTIFICATE line)")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise ValueError(f"not a readable PEM certificate bundle: {exc}") from None
    if not certs:
        raise ValueError("the PEM bundle holds no certificate")
    return certs


def describe_ca_bundle(pem: str) -> tuple[str, ...]:
    """One line per certificate of a stored bundle: subject, SHA-256 fingerprint (first 8 bytes),
    last day of validity. For `source show`; the bundle itself is public, but long."""
    lines = []
    for cert in load_ca_bundle(pem):
        digest = cert.fingerprint(hashes.SHA256()).hex(":")[:23]
        until = cert.not_valid_after_utc.date().isoformat()
        lines.append(f"{cert.subject.rfc4514_string()} (sha256 {digest}…, valid until {until})")
    return tuple(lines)


@functools.lru_cache(maxsize=64)
def upstream_context(mode: str, ca_pem: str | None = None) -> ssl.SSLContext:
    """The client-side context for an upstream database in a source's TLS `mode`.

    prefer / require: encrypted, the certificate is not checked (libpq's sslmode=require).
    verify-ca: the certificate must chain to `ca_pem` (else to the system's trust store).
    verify-full: as verify-ca, and it must name the host QueryBase connects to (DNS or IP SAN).
    Contexts are cached per (mode, bundle): building one and loading a bundle costs milliseconds,
    which every pooled connect would otherwise pay.
    """
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls_verified(mode):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_pem:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system CAs: only the source's bundle
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cadata=ca_pem)
        except ssl.SSLError as exc:
            raise ConfigError(f"the source's CA bundle cannot be loaded: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = mode == "verify-full"
    return context


def describe_tls_failure(exc: BaseException, mode: str) -> str:
    """One line for a failed upstream TLS handshake: what was checked and why it failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return f"the server's TLS certificate was refused ({mode}): {reason}"
    reason = getattr(exc, "reason", None) or str(exc)
    return f"the TLS handshake failed ({mode}): {reason}"
