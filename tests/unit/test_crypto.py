"""Secret sealing (AES-256-GCM, context-bound) and the store key: file creation and loading."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.config import Settings, build_settings
from proxy.errors import ConfigError, SecretError
from proxy.store.crypto import SecretBox, create_key_file, load_key

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CONTEXT = "source:shop:read"
PASSWORD = "hunter2-correct-horse"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def blob_of(sealed: str) -> bytes:
    assert sealed.startswith("v1:")
    return base64.urlsafe_b64decode(sealed[3:])


def sealed_from(blob: bytes, prefix: str = "v1:") -> str:
    return prefix + base64.urlsafe_b64encode(blob).decode("ascii")


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KEY)


@pytest.fixture
def sealed(box: SecretBox) -> str:
    return box.seal(PASSWORD, CONTEXT)


# sealing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    ["s3cret", "", "пароль 密码 🔑 ünïcødé", "x" * 4096, "with\x00nul and\nnewline", " spaced "],
)
def test_round_trip(box: SecretBox, plaintext: str) -> None:
    assert box.open(box.seal(plaintext, CONTEXT), CONTEXT) == plaintext


def test_a_second_box_with_the_same_key_opens_it(sealed: str) -> None:
    assert SecretBox(bytes(KEY)).open(sealed, CONTEXT) == PASSWORD


def test_sealed_text_is_aes_256_gcm_with_the_context_as_associated_data(sealed: str) -> None:
    # Format: v1: + base64url(nonce(12) ‖ ciphertext ‖ tag(16)), checked with the library directly.
    blob = blob_of(sealed)
    assert len(blob) == 12 + len(PASSWORD.encode()) + 16
    plain = AESGCM(KEY).decrypt(blob[:12], blob[12:], CONTEXT.encode())
    assert plain.decode() == PASSWORD


def test_text_sealed_elsewhere_with_the_same_scheme_opens(box: SecretBox) -> None:
    nonce = os.urandom(12)
    blob = nonce + AESGCM(KEY).encrypt(nonce, "älskling".encode(), b"source:crm:write")
    assert box.open(sealed_from(blob), "source:crm:write") == "älskling"


def test_two_seals_of_the_same_text_differ(box: SecretBox) -> None:
    first, second = box.seal(PASSWORD, CONTEXT), box.seal(PASSWORD, CONTEXT)
    assert first != second
    assert blob_of(first)[:12] != blob_of(second)[:12]  # fresh nonce
    assert box.open(first, CONTEXT) == box.open(second, CONTEXT) == PASSWORD


def test_nonces_do_not_repeat(box: SecretBox) -> None:
    nonces = {blob_of(box.seal("x", CONTEXT))[:12] for _ in range(200)}
    assert len(nonces) == 200


def test_plaintext_does_not_appear_in_the_sealed_text(box: SecretBox) -> None:
    secret = "PlainTextPassword123"
    sealed = box.seal(secret, CONTEXT)
    assert secret not in sealed
    assert secret.encode() not in blob_of(sealed)
    assert base64.urlsafe_b64encode(secret.encode()).decode()[:16] not in sealed


def test_wrong_key(sealed: str) -> None:
    with pytest.raises(SecretError) as info:
        SecretBox(OTHER_KEY).open(sealed, CONTEXT)
    assert CONTEXT in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("context", ["source:shop:write", "source:shop2:read", "source:sho:read", ""])
def test_wrong_context(box: SecretBox, sealed: str, context: str) -> None:
    with pytest.raises(SecretError):
        box.open(sealed, context)


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_every_flipped_byte_is_detected(box: SecretBox, sealed: str, bit: int) -> None:
    blob = blob_of(sealed)
    for position in range(len(blob)):  # nonce, body and tag
        tampered = bytearray(blob)
        tampered[position] ^= bit
        with pytest.raises(SecretError):
            box.open(sealed_from(bytes(tampered)), CONTEXT)


def test_appended_bytes_are_detected(box: SecretBox, sealed: str) -> None:
    with pytest.raises(SecretError):
        box.open(sealed_from(blob_of(sealed) + b"\x00"), CONTEXT)


@pytest.mark.parametrize("keep", [0, 1, 11, 12, 27])
def test_truncated_below_nonce_and_tag(box: SecretBox, sealed: str, keep: int) -> None:
    with pytest.raises(SecretError, match="truncated"):
        box.open(sealed_from(blob_of(sealed)[:keep]), CONTEXT)


@pytest.mark.parametrize("drop", [1, 4, 16])
def test_truncated_tag(box: SecretBox, sealed: str, drop: int) -> None:
    with pytest.raises(SecretError):
        box.open(sealed_from(blob_of(sealed)[:-drop]), CONTEXT)


def test_truncated_text(box: SecretBox, sealed: str) -> None:
    for cut in (1, 2, 3, 4, 8):
        with pytest.raises(SecretError):
            box.open(sealed[:-cut], CONTEXT)


@pytest.mark.parametrize("text", ["v1:abc", "v1:!!!!", "v1:ünïcödé", "v1:", "v1:====", "v1:" + "A" * 5])
def test_not_base64(box: SecretBox, text: str) -> None:
    with pytest.raises(SecretError):
        box.open(text, CONTEXT)


@pytest.mark.parametrize("prefix", ["v2:", "V1:", "v1", "", "v0:"])
def test_unknown_version_prefix(box: SecretBox, sealed: str, prefix: str) -> None:
    with pytest.raises(SecretError, match="unknown format"):
        box.open(prefix + sealed[3:], CONTEXT)


def test_plain_password_is_not_a_sealed_value(box: SecretBox) -> None:
    with pytest.raises(SecretError):
        box.open(PASSWORD, CONTEXT)


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_box_needs_a_32_byte_key(length: int) -> None:
    with pytest.raises(SecretError, match="32 bytes"):
        SecretBox(b"k" * length)


# key file ------------------------------------------------------------------------------------


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_create_key_file_is_private_and_holds_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "querybase.key"
    assert create_key_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = b64url_decode(path.read_text(encoding="ascii").strip())
    assert len(key) == 32
    SecretBox(key)  # usable


def test_create_key_file_does_not_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "querybase.key"
    assert create_key_file(path) is True
    before = path.read_bytes()
    assert create_key_file(path) is False
    assert path.read_bytes() == before


def test_create_key_file_leaves_a_foreign_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "querybase.key"
    path.write_text("operator's own key\n")
    assert create_key_file(path) is False
    assert path.read_text() == "operator's own key\n"


def test_create_key_file_makes_fresh_keys(tmp_path: Path) -> None:
    create_key_file(tmp_path / "a.key")
    create_key_file(tmp_path / "b.key")
    assert (tmp_path / "a.key").read_text() != (tmp_path / "b.key").read_text()


def settings_with_key_file(tmp_path: Path, key_file: str = "querybase.key") -> Settings:
    return build_settings(tmp_path / "querybase.toml", {"secrets": {"key_file": key_file}}, {})


def test_load_key_from_the_file(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path, "keys/store.key")
    create_key_file(tmp_path / "keys" / "store.key")
    expected = b64url_decode((tmp_path / "keys" / "store.key").read_text().strip())
    assert load_key(settings, {}) == expected


def test_key_from_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path)
    create_key_file(settings.secrets.key_file)
    env_key = os.urandom(32)
    env = {"QUERYBASE_SECRET_KEY": base64.urlsafe_b64encode(env_key).decode().rstrip("=")}
    assert load_key(settings, env) == env_key


def test_key_from_the_environment_needs_no_file(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path, "missing.key")
    env_key = os.urandom(32)
    assert load_key(settings, {"QUERYBASE_SECRET_KEY": base64.urlsafe_b64encode(env_key).decode()}) == env_key


def test_standard_base64_key_is_accepted(tmp_path: Path) -> None:
    # What `openssl rand -base64 32` prints: '+', '/' and '=' padding.
    key = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFE, 0xFF])
    text = base64.b64encode(key).decode()
    assert "+" in text
    assert "/" in text
    assert text.endswith("=")
    assert load_key(settings_with_key_file(tmp_path, "missing.key"), {"QUERYBASE_SECRET_KEY": text}) == key


def test_key_from_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_key = os.urandom(32)
    monkeypatch.setenv("QUERYBASE_SECRET_KEY", base64.urlsafe_b64encode(env_key).decode())
    assert load_key(settings_with_key_file(tmp_path, "missing.key")) == env_key


def test_empty_environment_variable_falls_back_to_the_file(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path)
    create_key_file(settings.secrets.key_file)
    expected = b64url_decode(settings.secrets.key_file.read_text().strip())
    assert load_key(settings, {"QUERYBASE_SECRET_KEY": ""}) == expected


def key_error(settings: Settings, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_key(settings, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", ["ключ-не-base64", "%%%%"])
def test_bad_environment_value_names_the_variable(tmp_path: Path, value: str) -> None:
    settings = settings_with_key_file(tmp_path)
    create_key_file(settings.secrets.key_file)  # present, but the variable still decides
    message = key_error(settings, {"QUERYBASE_SECRET_KEY": value})
    assert message.startswith("QUERYBASE_SECRET_KEY: ")
    assert value not in message


@pytest.mark.parametrize("length", [16, 31, 33, 64])
def test_environment_key_of_the_wrong_length(tmp_path: Path, length: int) -> None:
    value = base64.urlsafe_b64encode(os.urandom(length)).decode()
    message = key_error(settings_with_key_file(tmp_path), {"QUERYBASE_SECRET_KEY": value})
    assert message.startswith("QUERYBASE_SECRET_KEY: ")
    assert f"must be 32 bytes, got {length}" in message
    assert value not in message


def test_missing_key_file_names_the_setting_and_path(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path, "absent.key")
    message = key_error(settings, {})
    assert message.startswith("secrets.key_file: ")
    assert str(tmp_path / "absent.key") in message
    assert "No such file" in message


@pytest.mark.parametrize(
    "content",
    [
        base64.urlsafe_b64encode(b"short") + b"\n",
        base64.urlsafe_b64encode(bytes(16)) + b"\n",
        base64.urlsafe_b64encode(bytes(48)),
        b"",
    ],
)
def test_key_file_of_the_wrong_length(tmp_path: Path, content: bytes) -> None:
    settings = settings_with_key_file(tmp_path)
    settings.secrets.key_file.write_bytes(content)
    message = key_error(settings, {})
    assert message.startswith("secrets.key_file")
    assert str(settings.secrets.key_file) in message
    assert "must be 32 bytes" in message


def test_key_file_that_is_not_text(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path)
    settings.secrets.key_file.write_bytes(os.urandom(16) + b"\xff\xfe" + os.urandom(14))
    message = key_error(settings, {})
    assert message.startswith("secrets.key_file")
    assert str(settings.secrets.key_file) in message


def test_key_file_that_is_a_directory(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path)
    settings.secrets.key_file.mkdir()
    message = key_error(settings, {})
    assert message.startswith("secrets.key_file: cannot read")


def test_loaded_key_opens_what_the_created_key_sealed(tmp_path: Path) -> None:
    settings = settings_with_key_file(tmp_path)
    create_key_file(settings.secrets.key_file)
    sealed = SecretBox(load_key(settings, {})).seal(PASSWORD, CONTEXT)
    assert SecretBox(load_key(settings, {})).open(sealed, CONTEXT) == PASSWORD
