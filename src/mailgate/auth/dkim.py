"""DKIM verification (RFC 6376, RFC 8463 ed25519, RFC 8301 crypto updates) on dkimpy, every
signature of a message, with the keys looked up through mailgate's DNS.

dkimpy is synchronous: `verify_dkim` runs it in the auth worker pool (see
`mailgate.auth.spf.run_with_loop_dns`), and its `dnsfunc` (the key lookup) awaits
`TxtDns.txt` on the event loop. The steps of dkimpy's `DKIM.verify` are called one by one
(`verify_headerprep`, `load_pk_from_dns`, `verify_sig_process`) because `verify` turns a
missing key, a bad key, a DNS timeout and a wrong signature all into the same False; here each
gets its own result (RFC 8601 §2.7.1):

- pass: the signature verifies;
- fail: it does not (wrong signature, body hash mismatch: the message was changed);
- permerror: the signature cannot be checked and will never be: missing or invalid tags,
  expired, no key at the selector, unusable or revoked key, key too small (RFC 8301 §3.2);
- temperror: the key lookup failed temporarily (RFC 6376 §6.1.2 TEMPFAIL);
- neutral: a signature mailgate does not evaluate: rsa-sha1 (RFC 8301 §3.1), ed25519 without
  PyNaCl installed, or anything dkimpy could not process;
- none (no result at all, empty tuple): the message carries no DKIM-Signature.

Security notes: signatures and keys come from the sender. At most `max_signatures`
signatures are checked per message (each costs a DNS lookup and a public-key operation), keys
under 1024 bits are refused, and `time_limit` bounds the whole verification.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]

from mailgate.auth.spf import LoopBridge, run_with_loop_dns
from mailgate.dns import DnsNotFound, DnsTempError

__all__ = [
    "DkimResultCode",
    "DkimSignatureResult",
    "TxtDns",
    "is_signed",
    "verify_dkim",
]

log = logging.getLogger(__name__)

DkimResultCode = Literal["pass", "fail", "neutral", "temperror", "permerror"]

DEFAULT_TIME_LIMIT = 20.0
DEFAULT_MAX_SIGNATURES = 10
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers MUST NOT consider shorter keys valid
_SIGNATURE_HEADER = re.compile(rb"(?im)^dkim-signature[ \t]*:")


class TxtDns(Protocol):
    """TXT lookups as `mailgate.dns.Resolver.txt` does them (which satisfies this): each
    record's strings concatenated (RFC 6376 §3.6.2.2); `DnsNotFound` for NXDOMAIN,
    `DnsTempError` for SERVFAIL or a timeout; [] when the name has no TXT record."""

    async def txt(self, name: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    """The result of one DKIM-Signature: d= (SDID), s= and, for anything but pass, why."""

    result: DkimResultCode
    domain: str
    selector: str
    reason: str = ""
    algorithm: str = ""

    @property
    def authenticated_domain(self) -> str | None:
        """The DKIM-authenticated domain for DMARC (RFC 7489 §3.1.1), when it passed."""
        return self.domain.lower() if self.result == "pass" and self.domain else None


class _KeyLookupTempError(Exception):
    """Raised through dkimpy (which knows nothing of it) when the key lookup failed for now."""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    return str(value) if value is not None else ""


def _tags(header_value: bytes) -> dict[bytes, bytes]:
    """The signature's tags, or {} when the tag list is broken (for reporting d= and s=)."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(header_value)
    except Exception:
        return {}
    return tags


def is_signed(message: bytes) -> bool:
    """Whether the header section has a DKIM-Signature field."""
    end = message.find(b"\r\n\r\n")
    return _SIGNATURE_HEADER.search(message, 0, end if end >= 0 else len(message)) is not None


class _Verifier:
    """Runs in a worker thread: verifies each signature of one message."""

    def __init__(self, message: bytes, lookup: Callable[[str], list[str]], minkey: int) -> None:
        self._message = message
        self._lookup = lookup
        self._minkey = minkey

    def dnsfunc(self, name: bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's `dnsfunc`: the key record at `name`, None when there is none."""
        qname = _text(name).rstrip(".")
        try:
            records = self._lookup(qname)
        except DnsNotFound:
            return None
        except DnsTempError as exc:
            raise _KeyLookupTempError(exc.reason) from exc
        # RFC 6376 §6.1.2: with several records the verifier may choose one: the first.
        return records[0].encode("utf-8") if records else None

    def run(self, max_signatures: int) -> tuple[DkimSignatureResult, ...]:
        if not is_signed(self._message):
            return ()
        try:
            checker = dkim.DKIM(self._message, logger=log, minkey=self._minkey)
        except Exception as exc:
            return (DkimSignatureResult("permerror", "", "", f"unparsable header: {exc}"),)
        signatures = [(n, v) for n, v in checker.headers if n.lower() == b"dkim-signature"]
        if not signatures:
            return ()
        if len(signatures) > max_signatures:
            log.info("DKIM: %d signatures, the first %d checked", len(signatures), max_signatures)
        checked = signatures[:max_signatures]
        return tuple(self._one(checker, i, value) for i, (_n, value) in enumerate(checked))

    def _one(self, checker: Any, idx: int, header_value: bytes) -> DkimSignatureResult:
        tags = _tags(header_value)
        domain = _text(tags.get(b"d", b"")).strip()
        selector = _text(tags.get(b"s", b"")).strip()
        algorithm = _text(tags.get(b"a", b"")).strip().lower()

        def result(code: DkimResultCode, reason: str = "") -> DkimSignatureResult:
            return DkimSignatureResult(code, domain, selector, reason, algorithm)

        try:
            prep = checker.verify_headerprep(idx)
        except dkim.DKIMException as exc:
            # RFC 6376 §6.1.1: a signature with missing or invalid tags is PERMFAIL.
            return result("permerror", f"invalid signature: {exc}")
        except Exception as exc:
            return result("neutral", f"signature could not be processed: {exc!r}")
        if not prep:
            return result("permerror", "invalid signature")
        sig, include_headers, sigheaders = prep
        if algorithm == "rsa-sha1":
            # RFC 8301 §3.1: rsa-sha1 MUST NOT be used for signing or verifying.
            return result("neutral", "rsa-sha1 is not accepted (RFC 8301)")
        name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
        try:
            checker.pk, checker.keysize, checker.ktag, checker.seqtlsrpt = dkim.load_pk_from_dns(
                name, self.dnsfunc
            )
        except _KeyLookupTempError as exc:
            # RFC 6376 §6.1.2: the key query failed to respond: TEMPFAIL.
            return result("temperror", f"key lookup failed: {exc}")
        except dkim.NaClNotFoundError:
            return result("neutral", "ed25519 keys need PyNaCl, which is not installed")
        except dkim.DKIMException as exc:
            # RFC 6376 §6.1.2: no key record, or a key that cannot be used: PERMFAIL.
            return result("permerror", f"key: {exc}")
        except Exception as exc:
            return result("permerror", f"key could not be read: {exc!r}")
        try:
            ok = checker.verify_sig_process(sig, include_headers, sigheaders[idx], self.dnsfunc)
        except dkim.ValidationError as exc:
            if "body hash mismatch" in str(exc):
                return result("fail", "body hash mismatch")
            return result("permerror", str(exc))
        except dkim.UnknownKeyTypeError as exc:
            return result("neutral", f"unknown key type {exc}")
        except dkim.DKIMException as exc:
            # Key too small (RFC 8301 §3.2) or not fit for the digest.
            return result("permerror", str(exc))
        except Exception as exc:
            return result("neutral", f"signature could not be processed: {exc!r}")
        return result("pass") if ok else result("fail", "signature did not verify")


async def verify_dkim(
    message: bytes,
    dns: TxtDns,
    *,
    time_limit: float = DEFAULT_TIME_LIMIT,
    max_signatures: int = DEFAULT_MAX_SIGNATURES,
    minkey: int = MIN_RSA_BITS,
) -> tuple[DkimSignatureResult, ...]:
    """Verify every DKIM-Signature of `message` (CRLF lines, as received), top first.

    Returns one result per signature (at most `max_signatures`); () when there is none.
    Past `time_limit` the remaining key lookups fail with temperror. Never raises for the
    message's or the DNS's sake.
    """

    if not is_signed(message):
        return ()  # the common unsigned case, without a worker thread

    def run(bridge: LoopBridge) -> tuple[DkimSignatureResult, ...]:
        def lookup(name: str) -> list[str]:
            return bridge.call(f"{name} TXT", lambda: dns.txt(name))

        return _Verifier(message, lookup, minkey).run(max_signatures)

    return await run_with_loop_dns(run, time_limit=time_limit)
