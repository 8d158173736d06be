"""DKIM verification (mailgate.auth.dkim): messages signed by dkimpy in the test, keys served by
an in-memory DNS.

ed25519 (RFC 8463) in dkimpy needs PyNaCl, which mailgate does not depend on (yet). When it is
not installed, `ed25519` below lends dkimpy a stand-in built on `cryptography` with the few
calls dkimpy makes (SigningKey, VerifyKey, Base64Encoder, BadSignatureError), so the ed25519
path of dkimpy still runs end to end; without any of it, ed25519 signatures are neutral.
"""

from __future__ import annotations

import asyncio
import base64
import time
import types
from typing import Any

import dkim
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.auth.dkim import DkimSignatureResult, TxtDns, verify_dkim
from mailgate.dns import DnsNotFound, DnsTempError

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: quarterly report\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <r1@example.com>\r\n"
    b"\r\n"
    b"The numbers are in.\r\n"
)
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]


class FakeTxt:
    """`TxtDns` from a dict: a list of records, or an exception to raise."""

    def __init__(self) -> None:
        self.records: dict[str, list[str] | Exception] = {}
        self.queries: list[str] = []

    async def txt(self, name: str) -> list[str]:
        self.queries.append(name)
        found = self.records.get(name.lower())
        if found is None:
            raise DnsNotFound(name, "NXDOMAIN")
        if isinstance(found, Exception):
            raise found
        return found


class HangingTxt:
    async def txt(self, name: str) -> list[str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def rsa_key(bits: int = 2048) -> tuple[bytes, str]:
    """(PEM private key, DNS key record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def ed25519_key() -> tuple[bytes, str]:
    """(base64 seed as dkimpy wants it, DNS key record)."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(seed), f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"


def sign(
    message: bytes,
    selector: str,
    domain: str,
    private: bytes,
    algorithm: bytes = b"rsa-sha256",
) -> bytes:
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private,
        signature_algorithm=algorithm,
        include_headers=HEADERS,
    )
    return bytes(header) + message


def _nacl_stand_in() -> types.SimpleNamespace:
    class BadSignatureError(Exception):
        pass

    class NaclValueError(ValueError):
        pass

    class Base64Encoder:
        @staticmethod
        def decode(data: bytes) -> bytes:
            return base64.b64decode(data)

    class VerifyKey:
        def __init__(self, key: bytes, encoder: type[Base64Encoder]) -> None:
            try:
                self._key = ed25519.Ed25519PublicKey.from_public_bytes(encoder.decode(key))
            except ValueError as exc:
                raise NaclValueError(str(exc)) from exc

        def verify(self, message: bytes, signature: bytes) -> bytes:
            try:
                self._key.verify(signature, message)
            except InvalidSignature as exc:
                raise BadSignatureError("bad signature") from exc
            return message

    class SigningKey:
        def __init__(self, seed: bytes, encoder: type[Base64Encoder]) -> None:
            self._key = ed25519.Ed25519PrivateKey.from_private_bytes(encoder.decode(seed))

        def sign(self, message: bytes) -> types.SimpleNamespace:
            return types.SimpleNamespace(signature=self._key.sign(message))

    return types.SimpleNamespace(
        signing=types.SimpleNamespace(VerifyKey=VerifyKey, SigningKey=SigningKey),
        encoding=types.SimpleNamespace(Base64Encoder=Base64Encoder),
        exceptions=types.SimpleNamespace(
            BadSignatureError=BadSignatureError, ValueError=NaclValueError
        ),
    )


@pytest.fixture
def ed25519_support(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(dkim, "nacl"):
        monkeypatch.setattr(dkim, "nacl", _nacl_stand_in(), raising=False)


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, str]:
    return rsa_key()


def verify(message: bytes, dns: TxtDns, **kwargs: Any) -> tuple[DkimSignatureResult, ...]:
    return asyncio.run(verify_dkim(message, dns, **kwargs))


def test_rsa_signature_passes(rsa_pair: tuple[bytes, str]) -> None:
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    (result,) = verify(sign(MESSAGE, "sel", "example.com", private), dns)
    assert result == DkimSignatureResult("pass", "example.com", "sel", "", "rsa-sha256")
    assert result.authenticated_domain == "example.com"
    assert dns.queries == ["sel._domainkey.example.com"]


def test_ed25519_signature_passes(ed25519_support: None) -> None:
    private, record = ed25519_key()
    dns = FakeTxt()
    dns.records["ed._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "ed", "example.com", private, b"ed25519-sha256")
    (result,) = verify(signed, dns)
    assert (result.result, result.domain, result.selector) == ("pass", "example.com", "ed")
    assert result.algorithm == "ed25519-sha256"


def test_ed25519_tampered_fails(ed25519_support: None) -> None:
    private, record = ed25519_key()
    dns = FakeTxt()
    dns.records["ed._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "ed", "example.com", private, b"ed25519-sha256")
    (result,) = verify(signed.replace(b"quarterly", b"annual"), dns)
    assert result.result == "fail"


def test_ed25519_without_pynacl_is_neutral(monkeypatch: pytest.MonkeyPatch) -> None:
    private, record = ed25519_key()
    monkeypatch.setattr(dkim, "nacl", _nacl_stand_in(), raising=False)
    signed = sign(MESSAGE, "ed", "example.com", private, b"ed25519-sha256")
    monkeypatch.delattr(dkim, "nacl")
    dns = FakeTxt()
    dns.records["ed._domainkey.example.com"] = [record]
    (result,) = verify(signed, dns)
    assert result.result == "neutral"
    assert "PyNaCl" in result.reason


def test_every_signature_is_verified(rsa_pair: tuple[bytes, str], ed25519_support: None) -> None:
    private, record = rsa_pair
    ed_private, ed_record = ed25519_key()
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    dns.records["ed._domainkey.list.example.org"] = [ed_record]
    signed = sign(MESSAGE, "sel", "example.com", private)
    signed = sign(signed, "ed", "list.example.org", ed_private, b"ed25519-sha256")
    results = verify(signed, dns)
    assert [(r.result, r.domain, r.selector) for r in results] == [
        ("pass", "list.example.org", "ed"),  # the topmost first
        ("pass", "example.com", "sel"),
    ]


def test_body_tampered_fails(rsa_pair: tuple[bytes, str]) -> None:
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "sel", "example.com", private)
    (result,) = verify(signed.replace(b"numbers are in", b"numbers are out"), dns)
    assert (result.result, result.reason) == ("fail", "body hash mismatch")
    assert result.authenticated_domain is None


def test_header_tampered_fails(rsa_pair: tuple[bytes, str]) -> None:
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "sel", "example.com", private)
    forged = signed.replace(b"From: Alice <alice@example.com>", b"From: Alice <ceo@example.com>")
    (result,) = verify(forged, dns)
    assert (result.result, result.reason) == ("fail", "signature did not verify")


def test_added_from_header_fails(rsa_pair: tuple[bytes, str]) -> None:
    # A second From above the signed one: dkimpy includes every From (its bug 644046 fix).
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "sel", "example.com", private)
    (result,) = verify(b"From: ceo@example.com\r\n" + signed, dns)
    assert result.result == "fail"


def test_key_missing_is_permerror(rsa_pair: tuple[bytes, str]) -> None:
    private, _record = rsa_pair
    signed = sign(MESSAGE, "sel", "example.com", private)
    (nxdomain,) = verify(signed, FakeTxt())
    assert (nxdomain.result, nxdomain.domain, nxdomain.selector) == (
        "permerror",
        "example.com",
        "sel",
    )
    assert "missing public key" in nxdomain.reason
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = []  # NODATA
    (nodata,) = verify(signed, dns)
    assert nodata.result == "permerror"


def test_revoked_key_is_permerror(rsa_pair: tuple[bytes, str]) -> None:
    private, _record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = ["v=DKIM1; k=rsa; p="]
    (result,) = verify(sign(MESSAGE, "sel", "example.com", private), dns)
    assert result.result == "permerror"


def test_wrong_key_fails(rsa_pair: tuple[bytes, str]) -> None:
    private, _record = rsa_pair
    _other_private, other_record = rsa_key()
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [other_record]
    (result,) = verify(sign(MESSAGE, "sel", "example.com", private), dns)
    assert result.result == "fail"


def test_key_too_small_is_permerror() -> None:
    private, record = rsa_key(1024)
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    signed = sign(MESSAGE, "sel", "example.com", private)
    (default,) = verify(signed, dns)
    assert default.result == "pass"  # RFC 8301: 1024 bits is the minimum
    (strict,) = verify(signed, dns, minkey=2048)
    assert strict.result == "permerror"
    assert "too small" in strict.reason


def test_dns_timeout_is_temperror(rsa_pair: tuple[bytes, str]) -> None:
    private, _record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = DnsTempError(
        "sel._domainkey.example.com", "timeout"
    )
    (result,) = verify(sign(MESSAGE, "sel", "example.com", private), dns)
    assert (result.result, result.domain, result.selector) == ("temperror", "example.com", "sel")


def test_time_limit_makes_temperror(rsa_pair: tuple[bytes, str]) -> None:
    private, _record = rsa_pair
    signed = sign(MESSAGE, "sel", "example.com", private)
    started = time.monotonic()
    (result,) = verify(signed, HangingTxt(), time_limit=0.3)
    assert result.result == "temperror"
    assert time.monotonic() - started < 5


def test_unsigned_message_has_no_result() -> None:
    assert verify(MESSAGE, FakeTxt()) == ()


def test_broken_signature_header_is_permerror() -> None:
    message = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from\r\n" + MESSAGE
    (result,) = verify(message, FakeTxt())
    assert (result.result, result.domain, result.selector) == ("permerror", "example.com", "sel")
    assert "missing" in result.reason


def test_unparsable_signature_tags_are_permerror() -> None:
    message = b"DKIM-Signature: garbage without tags\r\n" + MESSAGE
    (result,) = verify(message, FakeTxt())
    assert result.result == "permerror"


def test_rsa_sha1_is_not_accepted(rsa_pair: tuple[bytes, str]) -> None:
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    (result,) = verify(sign(MESSAGE, "sel", "example.com", private, b"rsa-sha1"), dns)
    assert result.result == "neutral"
    assert dns.queries == []  # not even looked up


def test_signature_count_is_bounded(rsa_pair: tuple[bytes, str]) -> None:
    private, record = rsa_pair
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = [record]
    signed = MESSAGE
    for _ in range(4):
        signed = sign(signed, "sel", "example.com", private)
    results = verify(signed, dns, max_signatures=2)
    assert [r.result for r in results] == ["pass", "pass"]
    assert len(dns.queries) == 2


def test_unparsable_message_with_signature_is_permerror() -> None:
    message = b"DKIM-Signature: v=1\r\n\x01bad header line\r\n\r\nbody\r\n"
    (result,) = verify(message, FakeTxt())
    assert result.result == "permerror"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_any_signature_header_gives_a_result(value: bytes) -> None:
    dns = FakeTxt()
    dns.records["sel._domainkey.example.com"] = ["v=DKIM1; k=rsa; p=AAAA"]
    message = (
        b"DKIM-Signature: " + value.replace(b"\r", b"").replace(b"\n", b" ") + b"\r\n" + MESSAGE
    )
    results = verify(message, dns)
    assert len(results) <= 1
    assert all(r.result in ("fail", "neutral", "temperror", "permerror") for r in results)
