"""Protection settings and rules (Settings → General → Protection, and Rules): the scan modules,
how to reach their engines, and per rule and per module verdict what happens to a message.

The model follows KSMG: rules are tried top to bottom, the first enabled rule whose senders,
recipients and client networks match wins, and a default rule always exists. Each rule says,
for each module and verdict, an action: skip, reject (5xx before the 250), delete (250, then
dropped, no report), delete_attachment, quarantine (250, kept, releasable), or tempfail (451,
for scanner trouble). Defaults: reject for a positive verdict, tempfail when a scanner cannot
answer, so nothing unscanned slips through and nothing is lost.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class Action(StrEnum):
    SKIP = "skip"
    REJECT = "reject"
    DELETE = "delete"
    DELETE_ATTACHMENT = "delete_attachment"
    QUARANTINE = "quarantine"
    TEMPFAIL = "tempfail"


# When several modules fire, the strictest action wins (SPEC section 3). A temporary failure is
# strictest of all: the client keeps the whole message and tries again later.
STRICTNESS = {
    Action.TEMPFAIL: 6,
    Action.DELETE: 5,
    Action.REJECT: 4,
    Action.QUARANTINE: 3,
    Action.DELETE_ATTACHMENT: 2,
    Action.SKIP: 1,
}


def strictest(actions: list[Action]) -> Action:
    return max(actions, key=STRICTNESS.__getitem__, default=Action.SKIP)


def _pattern(value: str) -> str:
    """An address mask ("*@example.com", "bob@*"), or a regular expression as "re:..."."""
    text = value.strip()
    if text.startswith("re:"):
        try:
            re.compile(text[3:])
        except re.error as exc:
            raise ValueError(f"{value!r}: bad regular expression ({exc})") from None
    elif not text:
        raise ValueError("an empty pattern matches nothing; use * for everything")
    return text


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r}: bad regular expression ({exc})") from None
    return value


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address or network") from exc


def _endpoint(value: str) -> str:
    """clamd: "unix:/path/to/socket" or "host:port"."""
    text = value.strip()
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise ValueError(f"{value!r}: a Unix socket path must be absolute")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: use unix:/path or host:port")
    return text


Pattern = Annotated[str, AfterValidator(_pattern)]
Regex = Annotated[str, AfterValidator(_regex)]
Network = Annotated[str, AfterValidator(_network)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
Seconds = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# -- modules ---------------------------------------------------------------------------------


class AntivirusSettings(_Section):
    """Anti-Virus: ClamAV's clamd, messages streamed with zINSTREAM."""

    enabled: bool = Field(False, description="Scan messages for viruses.")
    clamd: Endpoint = Field(
        "unix:/run/clamav/clamd.ctl", description='clamd address: "unix:/path" or "host:port".'
    )
    timeout: Seconds = Field(30, description="Deadline of one scan (seconds).")


class AntispamSettings(_Section):
    """Anti-Spam: Rspamd's /checkv2 over HTTP."""

    enabled: bool = Field(False, description="Score messages with Rspamd.")
    url: str = Field(
        "http://127.0.0.1:11333", description="Rspamd normal worker, e.g. http://127.0.0.1:11333."
    )
    socket: str | None = Field(
        None,
        description=(
            "Rspamd's Unix socket (a bind_socket of its normal worker), e.g. "
            "/run/rspamd/normal.sock. When set, requests go there instead of to the URL's host "
            "and port, which costs less on the same host; the URL still gives the path."
        ),
    )
    timeout: Seconds = Field(15, description="Deadline of one check (seconds).")
    spam_score: float | None = Field(
        None,
        description=(
            "Score from which a message is spam. Empty: Rspamd's own action decides "
            "(reject = spam; add header, rewrite subject = probable spam)."
        ),
    )
    probable_spam_score: float | None = Field(
        None, description="Score from which a message is probable spam (with spam_score)."
    )

    @model_validator(mode="after")
    def _scores(self) -> AntispamSettings:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if self.socket is not None:
            if not self.socket.startswith("/"):
                raise ValueError("socket must be an absolute path")
            if self.url.startswith("https://"):
                raise ValueError("socket needs an http:// url (no TLS on a local socket)")
        if (self.spam_score is None) != (self.probable_spam_score is None):
            raise ValueError("spam_score and probable_spam_score go together")
        if (
            self.spam_score is not None
            and self.probable_spam_score is not None
            and self.probable_spam_score > self.spam_score
        ):
            raise ValueError("probable_spam_score must not exceed spam_score")
        return self


class ContentSettings(_Section):
    """Content Filtering: attachments (name, true type, size, inside archives), header and body
    patterns."""

    enabled: bool = Field(False, description="Filter messages by content.")
    blocked_names: list[Pattern] = Field(
        default_factory=lambda: ["*.exe", "*.scr", "*.pif", "*.com", "*.bat", "*.cmd", "*.vbs",
                                 "*.js", "*.jse", "*.wsf", "*.hta", "*.lnk", "*.iso"],
        description="Attachment file name masks (case-insensitive), also matched inside archives.",
    )  # fmt: skip
    blocked_types: list[str] = Field(
        default_factory=lambda: ["executable"],
        description=(
            "True file types refused whatever the name says, from the content's own bytes: "
            "executable (PE, ELF, Mach-O), script, office_macro, archive, pdf, image."
        ),
    )
    max_attachment_size: int = Field(
        0, ge=0, description="Largest attachment in bytes (decoded); 0 = no limit."
    )
    max_message_size: int = Field(0, ge=0, description="Largest message in bytes; 0 = no limit.")
    header_patterns: list[Regex] = Field(
        default_factory=list, description='Regular expressions on header lines ("Name: value").'
    )
    body_patterns: list[Regex] = Field(
        default_factory=list, description="Regular expressions on the decoded text parts."
    )
    archive_depth: int = Field(3, ge=0, le=10, description="Nested archives opened at most.")
    archive_members: int = Field(1000, ge=1, description="Members listed per archive at most.")
    archive_expansion: int = Field(
        100_000_000, ge=1, description="Total uncompressed bytes allowed per message (zip bombs)."
    )

    @model_validator(mode="after")
    def _types(self) -> ContentSettings:
        known = {"executable", "script", "office_macro", "archive", "pdf", "image"}
        unknown = [t for t in self.blocked_types if t not in known]
        if unknown:
            raise ValueError(f"unknown file types {unknown}; known: {sorted(known)}")
        return self


class PhishingSettings(_Section):
    """Anti-Phishing: links in text and HTML parts against local lists."""

    enabled: bool = Field(False, description="Check links against the lists.")
    domains: list[str] = Field(
        default_factory=list, description="Phishing domains; their subdomains match too."
    )
    url_patterns: list[Regex] = Field(
        default_factory=list, description="Regular expressions on whole URLs."
    )


class ExternalServices(_Section):
    """Settings → General → Protection → External services."""

    use_spf: bool = Field(True, description='"Use SPF authentication" (RFC 7208).')
    use_dkim: bool = Field(True, description="Verify DKIM signatures (RFC 6376).")
    use_dmarc: bool = Field(
        True, description='"Use DMARC authentication" (RFC 7489); needs SPF and DKIM.'
    )

    @model_validator(mode="after")
    def _dmarc_needs_both(self) -> ExternalServices:
        if self.use_dmarc and not (self.use_spf and self.use_dkim):
            raise ValueError("use_dmarc needs use_spf and use_dkim (as in KSMG)")
        return self


class QuarantineSettings(_Section):
    """Quarantine (KSMG "Backup"): kept originals."""

    retention_days: float = Field(30, gt=0, description="Messages older than this are removed.")
    max_size_mb: float = Field(
        1024, gt=0, description="Total size kept; the oldest go first beyond it (MiB)."
    )


class Protection(_Section):
    """Settings → General → Protection."""

    external_services: ExternalServices = Field(
        default_factory=ExternalServices, description="SPF, DKIM and DMARC switches."
    )
    antivirus: AntivirusSettings = Field(
        default_factory=AntivirusSettings, description="Anti-Virus."
    )
    antispam: AntispamSettings = Field(default_factory=AntispamSettings, description="Anti-Spam.")
    content: ContentSettings = Field(
        default_factory=ContentSettings, description="Content Filtering."
    )
    phishing: PhishingSettings = Field(
        default_factory=PhishingSettings, description="Anti-Phishing."
    )
    upstream_gateways: list[Network] = Field(
        default_factory=list,
        description=(
            "The border gateway(s): mailgate accepts XFORWARD and XCLIENT from these addresses "
            "only, and otherwise reads the real client from the Received header they add, so "
            "SPF and DMARC check the real sender's server instead of the border gateway."
        ),
    )
    quarantine: QuarantineSettings = Field(
        default_factory=QuarantineSettings, description="Quarantine retention."
    )
    scan_timeout: Seconds = Field(
        60, description="Deadline for all checks of one message together (seconds)."
    )


# -- rules -----------------------------------------------------------------------------------


class AntivirusActions(_Section):
    infected: Action = Field(Action.REJECT, description="A virus was found.")
    error: Action = Field(Action.TEMPFAIL, description="clamd unavailable, timed out, limits hit.")


class AntispamActions(_Section):
    spam: Action = Field(Action.REJECT, description="Spam.")
    probable_spam: Action = Field(Action.SKIP, description="Probable spam (tagged by default).")
    error: Action = Field(Action.TEMPFAIL, description="Rspamd unavailable or bad answer.")


class PhishingActions(_Section):
    phishing: Action = Field(Action.REJECT, description="A link is on the phishing lists.")
    error: Action = Field(Action.TEMPFAIL, description="The message could not be read.")


class ContentActions(_Section):
    blocked_attachment: Action = Field(
        Action.REJECT, description="A forbidden attachment (name, type or size)."
    )
    content_match: Action = Field(Action.REJECT, description="A header or body pattern matched.")
    error: Action = Field(Action.TEMPFAIL, description="The message could not be analysed.")


class AuthActions(_Section):
    dmarc_reject: Action = Field(
        Action.REJECT, description="DMARC fails and the domain's policy is reject."
    )
    dmarc_quarantine: Action = Field(
        Action.QUARANTINE, description="DMARC fails and the domain's policy is quarantine."
    )
    spf_fail: Action = Field(Action.SKIP, description="SPF says fail (no DMARC decision).")
    error: Action = Field(
        Action.SKIP, description="Temporary DNS errors (results recorded as temperror)."
    )


class Rule(_Section):
    """One rule: who it applies to, and what each module's verdicts lead to."""

    name: str = Field(min_length=1, max_length=100, description="Rule name.")
    enabled: bool = Field(True, description="Off: the rule is skipped.")
    senders: list[Pattern] = Field(
        default_factory=lambda: ["*"],
        description='Sender masks ("*@example.com", "*") or regular expressions ("re:...").',
    )
    recipients: list[Pattern] = Field(
        default_factory=lambda: ["*"], description="Recipient masks or regular expressions."
    )
    client_networks: list[Network] = Field(
        default_factory=list, description="Client address networks; empty: any client."
    )
    mode: Literal["modules", "skip", "reject", "delete"] = Field(
        "modules",
        description=(
            "modules: scan and apply the actions below; skip: no scanning; reject or "
            "delete: refuse or drop matching mail without scanning."
        ),
    )
    antivirus: AntivirusActions = Field(default_factory=AntivirusActions, description="Anti-Virus.")
    antispam: AntispamActions = Field(default_factory=AntispamActions, description="Anti-Spam.")
    phishing: PhishingActions = Field(default_factory=PhishingActions, description="Anti-Phishing.")
    content: ContentActions = Field(
        default_factory=ContentActions, description="Content Filtering."
    )
    auth: AuthActions = Field(default_factory=AuthActions, description="Mail Authentication.")
    spam_tag: str = Field(
        "[!!SPAM]", max_length=64, description="Subject tag for spam that is delivered."
    )
    probable_spam_tag: str = Field(
        "[!!Probable Spam]", max_length=64, description="Subject tag for probable spam."
    )
    x_headers: bool = Field(True, description="Add X-Mailgate-* headers with the verdicts.")

    @model_validator(mode="after")
    def _printable_tags(self) -> Rule:
        for tag in (self.spam_tag, self.probable_spam_tag, self.name):
            if not tag.isprintable():
                raise ValueError(f"{tag!r}: only printable characters (no line breaks)")
        return self


def default_rule() -> Rule:
    return Rule(name="Default")
