"""SCRAM-SHA-256 (proxy.auth.scram) against RFC 7677 and an independent implementation written here.

The reference side below follows RFC 5802 §3 step by step (Hi() is PBKDF2 written out with
HMAC, not a call into proxy.auth.verifiers), so a mistake shared by the code under test and its
helpers cannot make these tests pass.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth.scram import (
    SCRAM,
    SCRAM_PLUS,
    ScramClient,
    ScramServer,
    md5_password,
    mock_verifier,
    tls_server_end_point,
)
from proxy.auth.verifiers import SCRAM_ITERATIONS, make_scram_verifier, scram_verify_password
from proxy.wire.pg.protocol import ProtocolViolation

# RFC 7677 §3
RFC_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_CLIENT_FIRST_BARE = f"n=user,r={RFC_CLIENT_NONCE}"
RFC_SERVER_FIRST = f"r={RFC_CLIENT_NONCE}%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s={RFC_SALT_B64},i=4096"
RFC_CLIENT_FINAL = (
    f"c=biws,r={RFC_CLIENT_NONCE}%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
B64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

# ------------------------------------------------------------------ the independent reference side


def hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5802 Hi(): U1 = HMAC(pw, salt ‖ INT(1)), Ui = HMAC(pw, Ui-1), result = U1 ⊕ … ⊕ Ui."""
    u = hmac.new(password, salt + b"\x00\x00\x00\x01", hashlib.sha256).digest()
    result = int.from_bytes(u, "big")
    for _ in range(iterations - 1):
        u = hmac.new(password, u, hashlib.sha256).digest()
        result ^= int.from_bytes(u, "big")
    return result.to_bytes(32, "big")


_HI_CACHE: dict[tuple[str, bytes, int], bytes] = {}


def salted(password: str, salt: bytes, iterations: int) -> bytes:
    key = (password, salt, iterations)
    if key not in _HI_CACHE:
        _HI_CACHE[key] = hi(password.encode("utf-8"), salt, iterations)
    return _HI_CACHE[key]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def reference_client_final(
    password: str,
    client_first_bare: str,
    server_first: str,
    gs2_header: str = "n,,",
    cb_data: bytes = b"",
) -> tuple[bytes, bytes]:
    """(client-final message, server signature the client should expect)."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted_password = salted(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted_password, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted_password, b"Server Key", hashlib.sha256).digest()
    channel = base64.b64encode(gs2_header.encode() + cb_data).decode()
    without_proof = f"c={channel},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    proof = xor(client_key, hmac.new(stored_key, auth_message, hashlib.sha256).digest())
    signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode(), signature


def test_reference_side_reproduces_rfc_7677() -> None:
    final, signature = reference_client_final("pencil", RFC_CLIENT_FIRST_BARE, RFC_SERVER_FIRST)
    assert final.decode() == RFC_CLIENT_FINAL
    assert "v=" + base64.b64encode(signature).decode() == RFC_SERVER_FINAL


# ------------------------------------------------------------------ ScramServer


@pytest.fixture(scope="module")
def rfc_verifier():  # type: ignore[no-untyped-def]
    return make_scram_verifier("pencil", salt=base64.b64decode(RFC_SALT_B64))


def server_first_attrs(server_first: bytes) -> list[tuple[str, str]]:
    return [(part[0], part[2:]) for part in server_first.decode().split(",")]


def test_server_accepts_rfc_7677_client(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, f"n,,{RFC_CLIENT_FIRST_BARE}".encode())
    attrs = server_first_attrs(server_first)
    assert [name for name, _ in attrs] == ["r", "s", "i"]
    nonce = attrs[0][1]
    assert nonce.startswith(RFC_CLIENT_NONCE)
    assert len(nonce) > len(RFC_CLIENT_NONCE) + 16
    assert "," not in nonce
    assert attrs[1:] == [("s", RFC_SALT_B64), ("i", "4096")]

    final, signature = reference_client_final("pencil", RFC_CLIENT_FIRST_BARE, server_first.decode())
    assert server.final(final) == (True, b"v=" + base64.b64encode(signature))


def test_server_nonces_are_fresh(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    firsts = {ScramServer(rfc_verifier).first(SCRAM, b"n,,n=,r=abc") for _ in range(5)}
    assert len(firsts) == 5


def test_wrong_password_is_refused(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, b"n,,n=,r=clientnonce").decode()
    final, _ = reference_client_final("pencil2", "n=,r=clientnonce", server_first)
    assert server.final(final) == (False, b"")


def test_tampered_or_short_proof_is_refused(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, b"n,,n=,r=clientnonce").decode()
    final, _ = reference_client_final("pencil", "n=,r=clientnonce", server_first)
    head, _, proof = final.decode().rpartition(",p=")
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    assert server.final(f"{head},p={base64.b64encode(bytes(raw)).decode()}".encode()) == (False, b"")
    assert server.final(f"{head},p={base64.b64encode(bytes(raw[:16])).decode()}".encode()) == (False, b"")


def test_proof_for_another_exchange_is_refused(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    one, two = ScramServer(rfc_verifier), ScramServer(rfc_verifier)
    first_one = one.first(SCRAM, b"n,,n=,r=abc").decode()
    two.first(SCRAM, b"n,,n=,r=abc")
    final, _ = reference_client_final("pencil", "n=,r=abc", first_one)
    with pytest.raises(ProtocolViolation, match="nonce mismatch"):
        two.final(final)  # a replayed client-final carries the other exchange's nonce


def test_nonce_mismatch(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, b"n,,n=,r=abc").decode()
    forged = server_first.replace("r=abc", "r=abd")
    final, _ = reference_client_final("pencil", "n=,r=abc", forged)
    with pytest.raises(ProtocolViolation, match="SCRAM nonce mismatch"):
        server.final(final)
    with pytest.raises(ProtocolViolation, match="SCRAM nonce mismatch"):
        server.final(b"c=biws,p=" + base64.b64encode(b"x" * 32))


def test_y_flag_is_accepted_without_channel_binding(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, b"y,,n=,r=ynonce").decode()
    final, signature = reference_client_final("pencil", "n=,r=ynonce", server_first, gs2_header="y,,")
    assert b"c=eSws," in final
    assert server.final(final) == (True, b"v=" + base64.b64encode(signature))


def test_channel_data_must_repeat_the_gs2_header(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    server_first = server.first(SCRAM, b"y,,n=,r=ynonce").decode()
    final, _ = reference_client_final("pencil", "n=,r=ynonce", server_first, gs2_header="n,,")
    assert server.final(final) == (False, b"")


def test_y_flag_is_refused_when_server_offers_plus(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier, channel_binding=b"\x01" * 32)
    try:
        server_first = server.first(SCRAM, b"y,,n=,r=ynonce").decode()
    except ProtocolViolation:
        return
    final, _ = reference_client_final("pencil", "n=,r=ynonce", server_first, gs2_header="y,,")
    assert server.final(final) == (False, b"")


def test_n_flag_is_accepted_on_tls_too(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier, channel_binding=b"\x01" * 32)
    server_first = server.first(SCRAM, b"n,,n=,r=nnonce").decode()
    final, signature = reference_client_final("pencil", "n=,r=nnonce", server_first)
    assert server.final(final) == (True, b"v=" + base64.b64encode(signature))


@pytest.mark.parametrize("binding", [None, b"\x02" * 32])
def test_p_flag_is_refused_for_plain_scram(rfc_verifier, binding: bytes | None) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation, match="channel binding requested"):
        ScramServer(rfc_verifier, binding).first(SCRAM, b"p=tls-server-end-point,,n=,r=abc")


CERT_HASH = hashlib.sha256(b"querybase certificate").digest()


def plus_exchange(verifier, cb_data: bytes) -> tuple[tuple[bool, bytes], bytes]:  # type: ignore[no-untyped-def]
    server = ScramServer(verifier, channel_binding=CERT_HASH)
    gs2 = "p=tls-server-end-point,,"
    server_first = server.first(SCRAM_PLUS, f"{gs2}n=,r=plusnonce".encode()).decode()
    final, signature = reference_client_final(
        "pencil", "n=,r=plusnonce", server_first, gs2_header=gs2, cb_data=cb_data
    )
    return server.final(final), signature


def test_plus_with_matching_channel_binding(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    result, signature = plus_exchange(rfc_verifier, CERT_HASH)
    assert result == (True, b"v=" + base64.b64encode(signature))


@pytest.mark.parametrize("cb_data", [b"", CERT_HASH[:-1], hashlib.sha256(b"a proxy in the middle").digest()])
def test_plus_with_wrong_channel_binding(rfc_verifier, cb_data: bytes) -> None:  # type: ignore[no-untyped-def]
    result, _ = plus_exchange(rfc_verifier, cb_data)
    assert result == (False, b"")


def test_plus_needs_a_binding_and_the_p_flag(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation, match="unsupported SASL mechanism"):
        ScramServer(rfc_verifier).first(SCRAM_PLUS, b"p=tls-server-end-point,,n=,r=abc")
    for header in (b"n,,", b"y,,", b"p=tls-unique,,"):
        with pytest.raises(ProtocolViolation, match="tls-server-end-point"):
            ScramServer(rfc_verifier, CERT_HASH).first(SCRAM_PLUS, header + b"n=,r=abc")


def test_authzid_is_refused(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation, match="authorization identities"):
        ScramServer(rfc_verifier).first(SCRAM, b"n,a=admin,n=,r=abc")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "PLAIN", "", "scram-sha-256"])
def test_unknown_mechanism(rfc_verifier, mechanism: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation, match="unsupported SASL mechanism"):
        ScramServer(rfc_verifier).first(mechanism, b"n,,n=,r=abc")


@pytest.mark.parametrize(
    "client_first",
    [
        b"",
        b"n,,",
        b"n,",
        b"n,,n=user",
        b"n,,n=,r=",
        b"n,,r",
        b"n,,n=,,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"x,,n=,r=abc",
        b"n,,n=\xff,r=abc",
        b"\xff\xfe",
    ],
)
def test_malformed_client_first(rfc_verifier, client_first: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolViolation):
        ScramServer(rfc_verifier).first(SCRAM, client_first)


@pytest.mark.parametrize(
    "client_final",
    [
        b"",
        b"c=biws,r={nonce}",
        b"c=biws,r={nonce},p=not base64!",
        b"c=b!ws,r={nonce},p=AAAA",
        b"c=biws,,r={nonce},p=AAAA",
        b"c=biws,r={nonce},p=AAAA,x=1",
        b"c=biws,r={nonce}\xff,p=AAAA",
    ],
)
def test_malformed_client_final(rfc_verifier, client_final: bytes) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    nonce = server_first_attrs(server.first(SCRAM, b"n,,n=,r=abc"))[0][1]
    with pytest.raises(ProtocolViolation):
        server.final(client_final.replace(b"{nonce}", nonce.encode()))


def test_empty_proof_is_refused(rfc_verifier) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier)
    nonce = server_first_attrs(server.first(SCRAM, b"n,,n=,r=abc"))[0][1]
    assert server.final(f"c=biws,r={nonce},p=".encode()) == (False, b"")


@settings(max_examples=200, deadline=None)
@given(first=st.binary(max_size=60), final=st.binary(max_size=80), plus=st.booleans())
def test_arbitrary_bytes_only_raise_protocol_violation(
    rfc_verifier, first: bytes, final: bytes, plus: bool
) -> None:  # type: ignore[no-untyped-def]
    server = ScramServer(rfc_verifier, CERT_HASH)
    try:
        server.first(SCRAM_PLUS if plus else SCRAM, first)
        assert server.final(final) == (False, b"")
    except ProtocolViolation:
        pass


# ------------------------------------------------------------------ ScramClient


def test_client_against_server_round_trip() -> None:
    verifier = make_scram_verifier("s3cr€t")
    client, server = ScramClient("s3cr€t"), ScramServer(verifier)
    first = client.first()
    assert re.fullmatch(rb"n,,n=,r=[A-Za-z0-9+/]{24}", first)
    ok, server_final = server.final(client.final(server.first(SCRAM, first)))
    assert ok
    assert client.verify(server_final)


def test_client_with_wrong_password_is_refused() -> None:
    client, server = ScramClient("guess"), ScramServer(make_scram_verifier("s3cret"))
    assert server.final(client.final(server.first(SCRAM, client.first()))) == (False, b"")


def test_client_nonces_are_fresh() -> None:
    assert ScramClient("x").first() != ScramClient("x").first()


def independent_server(client: ScramClient, password: str) -> tuple[bytes, bytes, bytes]:
    """Play the server by hand: (server-first, client-final, the right server-final)."""
    client_first = client.first().decode()
    assert client_first.startswith("n,,")
    bare = client_first[3:]
    client_nonce = dict(part.split("=", 1) for part in bare.split(","))["r"]
    salt = b"\x10" * 16
    server_first = f"r={client_nonce}SERVERNONCE,s={base64.b64encode(salt).decode()},i=4096"
    client_final = client.final(server_first.encode())

    without_proof, _, proof_b64 = client_final.decode().rpartition(",p=")
    assert without_proof == f"c=biws,r={client_nonce}SERVERNONCE"
    salted_password = salted(password, salt, 4096)
    client_key = hmac.new(salted_password, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    recovered = xor(base64.b64decode(proof_b64), hmac.new(stored_key, auth_message, hashlib.sha256).digest())
    assert recovered == client_key  # the proof proves the password
    server_key = hmac.new(salted_password, b"Server Key", hashlib.sha256).digest()
    signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    return server_first.encode(), client_final, b"v=" + base64.b64encode(signature)


def test_client_against_independent_server() -> None:
    client = ScramClient("pencil")
    _, _, server_final = independent_server(client, "pencil")
    assert client.verify(server_final)


@pytest.mark.parametrize(
    "forged",
    [
        b"v=" + base64.b64encode(b"\x00" * 32),
        b"v=",
        b"v=@@@@",
        b"e=invalid-proof",
        b"e=other-error,v=AAAA",
    ],
)
def test_client_rejects_forged_server_final(forged: bytes) -> None:
    client = ScramClient("pencil")
    _, _, real = independent_server(client, "pencil")
    assert not client.verify(forged)
    assert client.verify(real)


def test_client_rejects_a_server_final_for_another_password() -> None:
    client = ScramClient("pencil")
    independent_server(client, "pencil")
    other = ScramClient("pencil")
    _, _, other_final = independent_server(other, "pencil")
    assert not client.verify(other_final)  # a different exchange's signature


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someone-elses-nonce,s=QUJD,i=4096",
        b"r={nonce}x,i=4096",
        b"r={nonce}x,s=QUJD",
        b"r={nonce}x,s=QUJD,i=-1",
        b"r={nonce}x,s=QUJD,i=many",
        b"garbage",
    ],
)
def test_client_refuses_malformed_server_first(server_first: bytes) -> None:
    client = ScramClient("pencil")
    nonce = client.first().decode().rpartition("r=")[2].encode()
    with pytest.raises(ProtocolViolation):
        client.final(server_first.replace(b"{nonce}", nonce))


@pytest.mark.parametrize(
    "server_first",
    [
        b"r={nonce}x,s=QUJD,i=0",
        "r={nonce}x,s=QUJD,i=\u00b2".encode(),
        b"r={nonce}x,s=abc,i=4096",
        b"r={nonce}x\xff,s=QUJD,i=1",
    ],
)
def test_client_malformed_server_first_raises_protocol_violation(server_first: bytes) -> None:
    client = ScramClient("pencil")
    nonce = client.first().decode().rpartition("r=")[2].encode()
    with pytest.raises(ProtocolViolation):
        client.final(server_first.replace(b"{nonce}", nonce))


# ------------------------------------------------------------------ mock_verifier


def test_mock_verifier_is_stable_and_per_user_and_secret() -> None:
    secret, other_secret = b"\x01" * 32, b"\x02" * 32
    one = mock_verifier("alice", secret)
    assert one == mock_verifier("alice", secret)
    assert one.salt != mock_verifier("bob", secret).salt
    assert one.stored_key != mock_verifier("bob", secret).stored_key
    assert one.salt != mock_verifier("alice", other_secret).salt
    assert one.stored_key != mock_verifier("alice", other_secret).stored_key


def test_mock_verifier_looks_like_a_real_one() -> None:
    mock, real = mock_verifier("alice", b"k" * 32), make_scram_verifier("pw")
    assert mock.iterations == real.iterations == SCRAM_ITERATIONS
    assert len(mock.salt) == len(real.salt)
    assert len(mock.stored_key) == len(real.stored_key) == 32
    assert len(mock.server_key) == len(real.server_key) == 32


@pytest.mark.parametrize("password", ["", "alice", "password", "k" * 32, "pencil", "\x00"])
def test_mock_verifier_never_verifies(password: str) -> None:
    mock = mock_verifier("alice", b"k" * 32)
    assert not scram_verify_password(mock, password)
    server = ScramServer(mock)
    server_first = server.first(SCRAM, b"n,,n=,r=mocknonce").decode()
    assert f"s={base64.b64encode(mock.salt).decode()},i=4096" in server_first
    final, _ = reference_client_final(password, "n=,r=mocknonce", server_first)
    assert server.final(final) == (False, b"")


@settings(max_examples=15, deadline=None)
@given(password=st.text(max_size=12), user=st.text(min_size=1, max_size=8))
def test_mock_verifier_never_verifies_random_passwords(password: str, user: str) -> None:
    assert not scram_verify_password(mock_verifier(user, b"secret"), password)


# ------------------------------------------------------------------ md5 and channel binding


def reference_md5(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's hash
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


def test_md5_password_postgres_postgres() -> None:
    salt = b"\x01\x02\x03\x04"
    # pg_authid stores "md5" + md5("postgrespostgres") for postgres/postgres
    assert hashlib.md5(b"postgrespostgres").hexdigest() == "3175bce1d3201d16594cebf9d7eb3f9d"  # noqa: S324
    assert md5_password("postgres", "postgres", salt) == reference_md5("postgres", "postgres", salt)
    assert len(md5_password("postgres", "postgres", salt)) == 35


def test_md5_password_order_and_salt() -> None:
    salt = b"\xaa\xbb\xcc\xdd"
    assert md5_password("alice", "secret", salt) == reference_md5("alice", "secret", salt)
    assert md5_password("alice", "secret", salt) != reference_md5("secret", "alice", salt)
    assert md5_password("alice", "secret", salt) != md5_password("alice", "secret", b"\x00" * 4)


def self_signed(key, algorithm: hashes.HashAlgorithm) -> bytes:  # type: ignore[no-untyped-def]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "querybase.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_tls_server_end_point_ecdsa_sha256() -> None:
    der = self_signed(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_tls_server_end_point_ecdsa_sha512() -> None:
    der = self_signed(ec.generate_private_key(ec.SECP384R1()), hashes.SHA512())
    assert tls_server_end_point(der) == hashlib.sha512(der).digest()


def test_tls_server_end_point_rsa_sha384() -> None:
    der = self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA384())
    assert tls_server_end_point(der) == hashlib.sha384(der).digest()
    assert len(tls_server_end_point(der)) == 48
