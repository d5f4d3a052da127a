"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, sans-IO: server side and client side.

Server side: the client's SCRAM user name is ignored (libpq sends "", pgjdbc "*"); the startup
user is authoritative. `n,,` and `y,,` are accepted when only SCRAM-SHA-256 is used (QueryBase
offers -PLUS only over TLS, where `p=tls-server-end-point` binds to QueryBase's own certificate).
An unknown user gets a mock verifier derived from a server secret, so the exchange looks the same
and fails only at the proof.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from proxy.auth.verifiers import (
    SCRAM_ITERATIONS,
    ScramVerifier,
    scram_client_proof,
    scram_keys,
    scram_salted_password,
    scram_server_signature,
    scram_verify_client_proof,
)
from proxy.wire.pg.protocol import ProtocolViolation

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
NONCE_BYTES = 18


def _attributes(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolViolation(f"malformed SCRAM {what}")
        pairs.append((part[0], part[2:]))
    return pairs


def mock_verifier(user: str, secret: bytes) -> ScramVerifier:
    """A stable, fake verifier for a user that does not exist (same shape, never matches)."""
    salt = hmac.digest(secret, b"salt:" + user.encode(), "sha256")[:16]
    key = hmac.digest(secret, b"key:" + user.encode(), "sha256")
    return ScramVerifier(SCRAM_ITERATIONS, salt, key, key)


@dataclass
class ScramServer:
    """One server-side exchange. `first()` then `final()`; `final()` says whether the proof holds."""

    verifier: ScramVerifier
    channel_binding: bytes | None = None  # tls-server-end-point hash when on TLS

    def __post_init__(self) -> None:
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""

    def first(self, mechanism: str, client_first: bytes) -> bytes:
        if mechanism not in (SCRAM, SCRAM_PLUS) or (mechanism == SCRAM_PLUS and not self.channel_binding):
            raise ProtocolViolation(f"unsupported SASL mechanism {mechanism!r}")
        try:
            text = client_first.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("malformed SCRAM client-first message") from None
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ProtocolViolation("malformed SCRAM client-first message")
        cbind, authzid, bare = parts
        if mechanism == SCRAM_PLUS:
            if cbind != "p=tls-server-end-point":
                raise ProtocolViolation("SCRAM-SHA-256-PLUS needs tls-server-end-point channel binding")
        elif cbind not in ("n", "y"):
            raise ProtocolViolation("channel binding requested but SCRAM-SHA-256 was selected")
        elif cbind == "y" and self.channel_binding:
            # "y": the client could bind but believes the server cannot. This server offered
            # SCRAM-SHA-256-PLUS, so someone removed it from the offer (RFC 5802 §6).
            raise ProtocolViolation("SCRAM channel binding negotiation error")
        if authzid:
            raise ProtocolViolation("SCRAM authorization identities are not supported")
        attrs = dict(_attributes(bare, "client-first message"))
        client_nonce = attrs.get("r", "")
        if not client_nonce or "m" in attrs:
            raise ProtocolViolation("malformed SCRAM client-first message")
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> tuple[bool, bytes]:
        """(proof valid, server-final message to send when valid)."""
        try:
            text = client_final.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("malformed SCRAM client-final message") from None
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ProtocolViolation("malformed SCRAM client-final message")
        attrs = dict(_attributes(without_proof, "client-final message"))
        expected_cbind = self._gs2_header.encode()
        if self._gs2_header.startswith("p="):
            expected_cbind += self.channel_binding or b""
        try:
            cbind = base64.b64decode(attrs.get("c", ""), validate=True)
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError:
            raise ProtocolViolation("malformed SCRAM client-final message") from None
        if attrs.get("r") != self._nonce:
            raise ProtocolViolation("SCRAM nonce mismatch")
        if not hmac.compare_digest(cbind, expected_cbind):
            return False, b""
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        if not scram_verify_client_proof(self.verifier, auth_message, proof):
            return False, b""
        signature = scram_server_signature(self.verifier.server_key, auth_message)
        return True, b"v=" + base64.b64encode(signature)


class ScramClient:
    """Client side, for logging in to an upstream PostgreSQL without channel binding."""

    def __init__(self, password: str) -> None:
        self._password = password
        self._nonce = base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode()
        self._client_first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        malformed = ProtocolViolation("upstream sent a malformed SCRAM server-first message")
        try:
            text = server_first.decode("utf-8")
            attrs = dict(_attributes(text, "server-first message"))
            nonce, iterations = attrs.get("r", ""), int(attrs.get("i", "").strip() or "0")
            salt = base64.b64decode(attrs.get("s", ""), validate=True)
        except (UnicodeDecodeError, ValueError):
            raise malformed from None
        if not nonce.startswith(self._nonce) or not salt or not 0 < iterations <= 10_000_000:
            raise malformed
        salted = scram_salted_password(self._password, salt, iterations)
        client_key, stored_key, server_key = scram_keys(salted)
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        proof = scram_client_proof(client_key, stored_key, auth_message)
        self._server_signature = scram_server_signature(server_key, auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        attrs = dict(_attributes(server_final.decode("utf-8", "replace"), "server-final message"))
        try:
            signature = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(signature, self._server_signature)


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """PostgreSQL's md5 response: "md5" + md5(md5(password ‖ user) ‖ salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's hash
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


def tls_server_end_point(certificate_der: bytes) -> bytes:
    """RFC 5929 channel binding: the certificate's hash (SHA-256 for SHA-1/SHA-256 signatures)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(certificate_der)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate_der)
    return digest.finalize()
