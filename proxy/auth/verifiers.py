"""Password verifiers: what QueryBase stores instead of passwords, and the checks against them.

Three verifiers are made from one password (DESIGN.md §6):
- SCRAM-SHA-256 (RFC 5802 / RFC 7677), in PostgreSQL's text form
  `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts);
- SHA256(SHA256(pw)) for MySQL `caching_sha2_password`, so its fast path always works;
- SHA1(SHA1(pw)) for MySQL `mysql_native_password`.
None of them lets anyone log in as the user elsewhere without the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata
from dataclasses import dataclass

SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16
SCRAM_KEY_BYTES = 32  # SHA-256 output


@dataclass(frozen=True)
class ScramVerifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self) -> str:
        b64 = base64.b64encode
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64(self.salt).decode()}"
            f"${b64(self.stored_key).decode()}:{b64(self.server_key).decode()}"
        )

    @classmethod
    def decode(cls, text: str) -> ScramVerifier:
        try:
            mechanism, iter_salt, keys = text.split("$")
            iterations, salt = iter_salt.split(":")
            stored_key, server_key = keys.split(":")
            verifier = cls(
                int(iterations),
                base64.b64decode(salt, validate=True),
                base64.b64decode(stored_key, validate=True),
                base64.b64decode(server_key, validate=True),
            )
        except ValueError:
            raise ValueError("not a SCRAM-SHA-256 verifier") from None
        if (
            mechanism != "SCRAM-SHA-256"
            or verifier.iterations < 1
            or not verifier.salt
            or len(verifier.stored_key) != SCRAM_KEY_BYTES
            or len(verifier.server_key) != SCRAM_KEY_BYTES
        ):
            raise ValueError("not a SCRAM-SHA-256 verifier")
        return verifier


def _saslprep(password: str) -> bytes:
    # PostgreSQL applies SASLprep and falls back to the raw bytes when the password is not valid
    # stringprep input; NFKC normalisation is the part that matters for real passwords.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def scram_salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)


def scram_keys(salted_password: bytes) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) from a SaltedPassword."""
    client_key = hmac.digest(salted_password, b"Client Key", "sha256")
    server_key = hmac.digest(salted_password, b"Server Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest(), server_key


def make_scram_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> ScramVerifier:
    salt = secrets.token_bytes(SCRAM_SALT_BYTES) if salt is None else salt
    _, stored_key, server_key = scram_keys(scram_salted_password(password, salt, iterations))
    return ScramVerifier(iterations, salt, stored_key, server_key)


def scram_client_proof(client_key: bytes, stored_key: bytes, auth_message: bytes) -> bytes:
    signature = hmac.digest(stored_key, auth_message, "sha256")
    return bytes(a ^ b for a, b in zip(client_key, signature, strict=True))


def scram_server_signature(server_key: bytes, auth_message: bytes) -> bytes:
    return hmac.digest(server_key, auth_message, "sha256")


def scram_verify_client_proof(verifier: ScramVerifier, auth_message: bytes, proof: bytes) -> bool:
    """The server side of SCRAM: does ClientProof prove knowledge of the password?"""
    if len(proof) != len(verifier.stored_key):
        return False
    signature = hmac.digest(verifier.stored_key, auth_message, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), verifier.stored_key)


def scram_verify_password(verifier: ScramVerifier, password: str) -> bool:
    salted = scram_salted_password(password, verifier.salt, verifier.iterations)
    _, stored_key, _ = scram_keys(salted)
    return hmac.compare_digest(stored_key, verifier.stored_key)


def sha256_sha256(password: str) -> bytes:
    """The caching_sha2_password verifier SHA256(SHA256(pw))."""
    return hashlib.sha256(hashlib.sha256(password.encode("utf-8")).digest()).digest()


def sha1_sha1(password: str) -> bytes:
    """The mysql_native_password verifier SHA1(SHA1(pw)); MySQL shows it as '*' + upper hex."""
    return hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).digest()  # noqa: S324


def verify_native_scramble(stored: bytes, nonce: bytes, response: bytes) -> bool:
    """mysql_native_password: response = SHA1(pw) XOR SHA1(nonce ‖ SHA1(SHA1(pw)))."""
    if len(response) != 20:
        return False
    mask = hashlib.sha1(nonce + stored).digest()  # noqa: S324
    candidate = bytes(a ^ b for a, b in zip(response, mask, strict=True))
    return hmac.compare_digest(hashlib.sha1(candidate).digest(), stored)  # noqa: S324


def verify_caching_sha2_scramble(stored: bytes, nonce: bytes, response: bytes) -> bool:
    """caching_sha2_password fast path: response = SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) ‖ nonce)."""
    if len(response) != 32:
        return False
    mask = hashlib.sha256(stored + nonce).digest()
    candidate = bytes(a ^ b for a, b in zip(response, mask, strict=True))
    return hmac.compare_digest(hashlib.sha256(candidate).digest(), stored)


def pg_md5_verifier(user: str, password: str) -> str:
    """PostgreSQL's stored md5 form, "md5" + md5(password ‖ user): only for users allowed md5."""
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()  # noqa: S324


def verify_pg_md5_response(stored: str, salt: bytes, response: bytes) -> bool:
    """md5 login: response = "md5" + md5(stored_hex ‖ salt)."""
    expected = "md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest()  # noqa: S324
    return hmac.compare_digest(expected.encode(), response)


@dataclass(frozen=True)
class PasswordVerifiers:
    scram: str
    sha256_sha256: bytes
    sha1_sha1: bytes


def make_verifiers(password: str) -> PasswordVerifiers:
    return PasswordVerifiers(
        scram=make_scram_verifier(password).encode(),
        sha256_sha256=sha256_sha256(password),
        sha1_sha1=sha1_sha1(password),
    )
