"""Password verifiers: SCRAM-SHA-256 against RFC 7677 and PostgreSQL's format, MySQL against PyMySQL."""

from __future__ import annotations

import base64
import hashlib
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth as pymysql_auth

from proxy.auth.verifiers import (
    ScramVerifier,
    make_scram_verifier,
    make_verifiers,
    scram_client_proof,
    scram_keys,
    scram_salted_password,
    scram_server_signature,
    scram_verify_client_proof,
    scram_verify_password,
    sha1_sha1,
    sha256_sha256,
    verify_caching_sha2_scramble,
    verify_native_scramble,
)

# RFC 7677 §3 (SCRAM-SHA-256 example exchange).
RFC_PASSWORD = "pencil"
RFC_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL_NO_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_PROOF_B64 = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_SIGNATURE_B64 = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_AUTH_MESSAGE = f"{RFC_CLIENT_FIRST_BARE},{RFC_SERVER_FIRST},{RFC_CLIENT_FINAL_NO_PROOF}".encode()

# What PostgreSQL stores in pg_authid.rolpassword for "pencil" with the RFC's salt
# (StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server Key")).
RFC_PG_VERIFIER = (
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    "$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
)
PG_VERIFIER_SHAPE = re.compile(
    r"^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$"
)


def double_sha1(data: bytes) -> bytes:
    """SHA1(SHA1(data)), MySQL's stored form of a native password (not a security use here)."""
    return hashlib.sha1(hashlib.sha1(data, usedforsecurity=False).digest(), usedforsecurity=False).digest()


@pytest.fixture(scope="module")
def rfc_verifier() -> ScramVerifier:
    return make_scram_verifier(RFC_PASSWORD, base64.b64decode(RFC_SALT_B64), 4096)


# SCRAM-SHA-256 -------------------------------------------------------------------------------


def test_rfc7677_verifier_is_postgresql_text(rfc_verifier: ScramVerifier) -> None:
    assert rfc_verifier.encode() == RFC_PG_VERIFIER


def test_rfc7677_client_proof_is_accepted(rfc_verifier: ScramVerifier) -> None:
    proof = base64.b64decode(RFC_PROOF_B64)
    assert scram_verify_client_proof(rfc_verifier, RFC_AUTH_MESSAGE, proof) is True


def test_rfc7677_server_signature(rfc_verifier: ScramVerifier) -> None:
    signature = scram_server_signature(rfc_verifier.server_key, RFC_AUTH_MESSAGE)
    assert base64.b64encode(signature).decode() == RFC_SERVER_SIGNATURE_B64


def test_rfc7677_client_side_computes_the_proof() -> None:
    salted = scram_salted_password(RFC_PASSWORD, base64.b64decode(RFC_SALT_B64), 4096)
    client_key, stored_key, _ = scram_keys(salted)
    proof = scram_client_proof(client_key, stored_key, RFC_AUTH_MESSAGE)
    assert base64.b64encode(proof).decode() == RFC_PROOF_B64


def test_every_modified_proof_byte_is_rejected(rfc_verifier: ScramVerifier) -> None:
    proof = base64.b64decode(RFC_PROOF_B64)
    for position in range(len(proof)):
        for bit in (0x01, 0x80):
            tampered = bytearray(proof)
            tampered[position] ^= bit
            assert scram_verify_client_proof(rfc_verifier, RFC_AUTH_MESSAGE, bytes(tampered)) is False


@pytest.mark.parametrize("proof", [b"", b"\x00" * 31, b"\x00" * 33, b"\x00" * 64])
def test_proof_of_the_wrong_length_is_rejected(rfc_verifier: ScramVerifier, proof: bytes) -> None:
    assert scram_verify_client_proof(rfc_verifier, RFC_AUTH_MESSAGE, proof) is False


def test_proof_for_another_auth_message_is_rejected(rfc_verifier: ScramVerifier) -> None:
    proof = base64.b64decode(RFC_PROOF_B64)
    replayed = RFC_AUTH_MESSAGE.replace(b"hvYDpWUa2RaTCAfuxFIlj", b"hvYDpWUa2RaTCAfuxFIlk")
    assert scram_verify_client_proof(rfc_verifier, replayed, proof) is False


def test_proof_against_another_passwords_verifier_is_rejected() -> None:
    other = make_scram_verifier("pencil2", base64.b64decode(RFC_SALT_B64), 4096)
    assert scram_verify_client_proof(other, RFC_AUTH_MESSAGE, base64.b64decode(RFC_PROOF_B64)) is False


def test_decode_postgresql_verifier() -> None:
    verifier = ScramVerifier.decode(RFC_PG_VERIFIER)
    assert verifier.iterations == 4096
    assert verifier.salt == base64.b64decode(RFC_SALT_B64)
    assert verifier.stored_key == base64.b64decode("WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=")
    assert verifier.server_key == base64.b64decode("wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
    assert scram_verify_client_proof(verifier, RFC_AUTH_MESSAGE, base64.b64decode(RFC_PROOF_B64))
    assert scram_verify_password(verifier, RFC_PASSWORD)


def test_encode_decode_round_trip() -> None:
    verifier = make_scram_verifier("correct horse battery staple")
    text = verifier.encode()
    assert PG_VERIFIER_SHAPE.match(text), text
    assert ScramVerifier.decode(text) == verifier
    assert ScramVerifier.decode(text).encode() == text


def test_fresh_verifiers_use_a_random_16_byte_salt() -> None:
    a, b = make_scram_verifier("same password"), make_scram_verifier("same password")
    assert len(a.salt) == len(b.salt) == 16
    assert a.iterations == 4096
    assert a.salt != b.salt
    assert a.stored_key != b.stored_key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "md5a3556571e93b0d20722ba62be61e8c2d",
        "SCRAM-SHA-1$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPL",
        RFC_PG_VERIFIER.replace("SCRAM-SHA-256", "scram-sha-256"),
        RFC_PG_VERIFIER.replace("4096:", "many:"),
        RFC_PG_VERIFIER.replace("4096:", "4096"),
        RFC_PG_VERIFIER.replace("=:", "=;"),
        RFC_PG_VERIFIER.replace("W22ZaJ0SNY7soEsUEjb6gQ==", "W22ZaJ0SNY7soEsUEjb6gQ"),
        RFC_PG_VERIFIER.replace("W22ZaJ0SNY7soEsUEjb6gQ==", "W22Za!0SNY7soEsUEjb6gQ=="),
        RFC_PG_VERIFIER + "$extra",
        RFC_PG_VERIFIER.replace("W22ZaJ0SNY7soEsUEjb6gQ==", ""),  # empty salt
        RFC_PG_VERIFIER.replace("$4096:", "$-4096:"),
        RFC_PG_VERIFIER + ":extra",
        RFC_PG_VERIFIER.split("$")[0] + "$" + RFC_PG_VERIFIER.split("$")[1],
    ],
)
def test_decode_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a SCRAM-SHA-256 verifier"):
        ScramVerifier.decode(text)


# PostgreSQL's parse_scram_secret rejects keys that are not 32 bytes; so must we, or
# scram_verify_client_proof() raises instead of answering False.
@pytest.mark.parametrize(
    "keys",
    [
        "YQ==:Yg==",
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:Yg==",
        "YQ==:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        ":",
    ],
)
def test_decode_rejects_keys_of_the_wrong_length(keys: str) -> None:
    with pytest.raises(ValueError, match="not a SCRAM-SHA-256 verifier"):
        ScramVerifier.decode(f"SCRAM-SHA-256$4096:{RFC_SALT_B64}${keys}")


# PBKDF2 cannot run 0 iterations: scram_verify_password() would raise instead of answering False.
def test_decode_rejects_a_non_positive_iteration_count() -> None:
    with pytest.raises(ValueError, match="not a SCRAM-SHA-256 verifier"):
        ScramVerifier.decode(RFC_PG_VERIFIER.replace("$4096:", "$0:"))


def test_verify_password(rfc_verifier: ScramVerifier) -> None:
    assert scram_verify_password(rfc_verifier, "pencil") is True
    assert scram_verify_password(rfc_verifier, "Pencil") is False
    assert scram_verify_password(rfc_verifier, "pencil ") is False
    assert scram_verify_password(rfc_verifier, "") is False


def test_verify_unicode_password() -> None:
    verifier = make_scram_verifier("pässwörd-密码")
    assert scram_verify_password(verifier, "pässwörd-密码") is True
    assert scram_verify_password(verifier, "passwort-密码") is False


def test_scram_verifier_does_not_contain_the_password() -> None:
    text = make_scram_verifier("VerySecretPassword").encode()
    assert "VerySecretPassword" not in text
    assert base64.b64encode(b"VerySecretPassword").decode()[:12] not in text


# MySQL ---------------------------------------------------------------------------------------


def test_native_verifier_is_mysqls_password_hash() -> None:
    # SELECT PASSWORD('password') on MySQL 5.x / MariaDB.
    assert "*" + sha1_sha1("password").hex().upper() == "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"


def test_verifier_lengths() -> None:
    assert len(sha1_sha1("x")) == 20
    assert len(sha256_sha256("x")) == 32


def test_caching_sha2_verifier_is_double_sha256() -> None:
    assert sha256_sha256("password") == hashlib.sha256(hashlib.sha256(b"password").digest()).digest()
    assert sha256_sha256("ü") == hashlib.sha256(hashlib.sha256("ü".encode()).digest()).digest()


def test_make_verifiers_gives_all_three() -> None:
    v = make_verifiers("open sesame 1")
    assert scram_verify_password(ScramVerifier.decode(v.scram), "open sesame 1")
    assert not scram_verify_password(ScramVerifier.decode(v.scram), "open sesame 2")
    assert v.sha256_sha256 == hashlib.sha256(hashlib.sha256(b"open sesame 1").digest()).digest()
    assert v.sha1_sha1 == double_sha1(b"open sesame 1")
    assert "open sesame" not in repr(v)


PASSWORDS = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
NONCES = st.binary(min_size=20, max_size=20)


@settings(max_examples=40, deadline=None)
@given(password=PASSWORDS, nonce=NONCES)
def test_native_scramble_from_pymysql(password: str, nonce: bytes) -> None:
    stored = sha1_sha1(password)
    response = pymysql_auth.scramble_native_password(password.encode(), nonce)
    assert len(response) == 20
    assert verify_native_scramble(stored, nonce, response) is True
    assert verify_native_scramble(sha1_sha1(password + "x"), nonce, response) is False
    wrong = pymysql_auth.scramble_native_password((password + "x").encode(), nonce)
    assert verify_native_scramble(stored, nonce, wrong) is False
    other_nonce = bytes([nonce[0] ^ 1]) + nonce[1:]
    assert verify_native_scramble(stored, other_nonce, response) is False
    assert verify_native_scramble(stored, nonce, response[:-1]) is False
    assert verify_native_scramble(stored, nonce, response + b"\x00") is False
    assert verify_native_scramble(stored, nonce, b"") is False


@settings(max_examples=40, deadline=None)
@given(password=PASSWORDS, nonce=NONCES)
def test_caching_sha2_scramble_from_pymysql(password: str, nonce: bytes) -> None:
    stored = sha256_sha256(password)
    response = pymysql_auth.scramble_caching_sha2(password.encode(), nonce)
    assert len(response) == 32
    assert verify_caching_sha2_scramble(stored, nonce, response) is True
    assert verify_caching_sha2_scramble(sha256_sha256(password + "x"), nonce, response) is False
    wrong = pymysql_auth.scramble_caching_sha2((password + "x").encode(), nonce)
    assert verify_caching_sha2_scramble(stored, nonce, wrong) is False
    other_nonce = nonce[:-1] + bytes([nonce[-1] ^ 0x80])
    assert verify_caching_sha2_scramble(stored, other_nonce, response) is False
    assert verify_caching_sha2_scramble(stored, nonce, response[:-1]) is False
    assert verify_caching_sha2_scramble(stored, nonce, response + b"\x00") is False
    assert verify_caching_sha2_scramble(stored, nonce, b"") is False


def test_native_and_caching_sha2_responses_are_not_interchangeable() -> None:
    nonce = os.urandom(20)
    native = pymysql_auth.scramble_native_password(b"password", nonce)
    sha2 = pymysql_auth.scramble_caching_sha2(b"password", nonce)
    assert verify_caching_sha2_scramble(sha256_sha256("password"), nonce, native) is False
    assert verify_native_scramble(sha1_sha1("password"), nonce, sha2) is False


def test_every_modified_response_byte_is_rejected() -> None:
    nonce = os.urandom(20)
    native = pymysql_auth.scramble_native_password(b"s3cret!", nonce)
    sha2 = pymysql_auth.scramble_caching_sha2(b"s3cret!", nonce)
    for response, stored, check in (
        (native, sha1_sha1("s3cret!"), verify_native_scramble),
        (sha2, sha256_sha256("s3cret!"), verify_caching_sha2_scramble),
    ):
        assert check(stored, nonce, response)
        for position in range(len(response)):
            tampered = bytearray(response)
            tampered[position] ^= 0x04
            assert check(stored, nonce, bytes(tampered)) is False
