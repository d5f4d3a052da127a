"""Secret sealing: the 32-byte store key and AES-256-GCM for source passwords.

A sealed value is text: `v1:` + base64url(nonce ‖ ciphertext ‖ tag). The associated data binds
each ciphertext to where it belongs (e.g. `source:shop:read`), so a sealed password copied onto
another source or role does not open. A wrong key or any flipped bit raises SecretError.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.config import SECRET_KEY_ENV, Settings
from proxy.errors import ConfigError, SecretError

KEY_BYTES = 32
NONCE_BYTES = 12
_VERSION = "v1:"


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii") + b"==")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError(f"{where}: the secret key is not base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{where}: the secret key must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


def create_key_file(path: Path) -> bool:
    """Create a fresh key file with mode 0600 unless one exists; True if it was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encode_key(secrets.token_bytes(KEY_BYTES)) + "\n")
    return True


def load_key(settings: Settings, environ: Mapping[str, str] | None = None) -> bytes:
    """The store key from $QUERYBASE_SECRET_KEY, else from `secrets.key_file`."""
    env = os.environ if environ is None else environ
    if env.get(SECRET_KEY_ENV):
        return _decode_key(env[SECRET_KEY_ENV], SECRET_KEY_ENV)
    path = settings.secrets.key_file
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"secrets.key_file: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"secrets.key_file: {path} is not a base64 key") from None
    return _decode_key(text, f"secrets.key_file ({path})")


class SecretBox:
    """Seals and opens short secrets under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretError(f"the secret key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, context: str) -> str:
        if not sealed.startswith(_VERSION):
            raise SecretError(f"sealed secret for {context} has an unknown format")
        try:
            blob = base64.urlsafe_b64decode(sealed[len(_VERSION) :].encode("ascii"))
        except (binascii.Error, ValueError):
            raise SecretError(f"sealed secret for {context} is not valid base64") from None
        if len(blob) < NONCE_BYTES + 16:
            raise SecretError(f"sealed secret for {context} is truncated")
        try:
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SecretError(
                f"cannot open the sealed secret for {context}: wrong key or modified ciphertext"
            ) from None
        return plain.decode("utf-8")
