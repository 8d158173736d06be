"""The configuration model: every setting mailgate has, typed, with its meaning and default.

Sections follow the administration interface of the seed (KSMG "Built-in MTA"): `domains`,
`main` (main settings) and `advanced` (advanced settings). Defaults are Postfix's where a
Postfix parameter exists; the field descriptions name it. `docs/configuration.md` is generated
from this module (`mailgate config reference`), so a description here is the documentation.

A configuration is validated as a whole: a bad value anywhere refuses the whole change, with
an error naming the field, and the running configuration stays as it was.
"""

from __future__ import annotations

import ipaddress
import socket
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mailgate.config.protection import Protection, Rule, default_rule
from mailgate.smtp.address import AddressError, parse_domain, parse_path

# Shortest line length limit that can be set (a continuation line needs room for its space
# and for text; RFC 5322's own recommendation is 78).
MIN_LINE_LENGTH_LIMIT = 78


class TlsLevel(StrEnum):
    """TLS security level, as Postfix's smtp(d)_tls_security_level."""

    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"


def _domain_name(value: str) -> str:
    try:
        name = parse_domain(value.strip())
    except AddressError as exc:
        raise ValueError(f"{value!r} is not a valid domain name") from exc
    if all(label.isdigit() for label in name.split(".")):
        raise ValueError(f"{value!r} is an address, not a domain name")
    return name


def _host(value: str) -> str:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return parse_domain(text)
    except AddressError as exc:
        raise ValueError(f"{value!r} is not a host name, IPv4 or IPv6 address") from exc


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address or network") from exc


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse "host:port", "[v6]:port", or a bare host when a default port is given."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not host:port")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (use host:port)")
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be 1-65535")
    return host, int(port_text)


def _listen_address(value: str) -> str:
    host, port = split_host_port(value)
    ip = _ip(host)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _nameserver(value: str) -> str:
    host, port = split_host_port(value, 53)
    ip = _ip(host)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


DomainName = Annotated[str, AfterValidator(_domain_name)]
HostName = Annotated[str, AfterValidator(_host)]
Network = Annotated[str, AfterValidator(_network)]
IpAddress = Annotated[str, AfterValidator(_ip)]
ListenAddress = Annotated[str, AfterValidator(_listen_address)]
Nameserver = Annotated[str, AfterValidator(_nameserver)]
Seconds = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=False, allow_inf_nan=False
    )


class NextHop(_Section):
    """A destination to send mail to: a domain's route, or the border gateway (relayhost)."""

    host: HostName = Field(
        description="Host name, fully qualified domain name, IPv4 or IPv6 address.",
    )
    port: int = Field(25, ge=1, le=65535, description="TCP port of the SMTP service.")
    mx_lookup: bool = Field(
        False,
        description=(
            '"Use MX record lookup": look up the MX records of `host` and deliver to them '
            "(Postfix `host:port`). Off: connect to the A/AAAA addresses of `host` directly "
            "(Postfix `[host]:port`). Only for names, not IP addresses."
        ),
    )

    @model_validator(mode="after")
    def _mx_needs_name(self) -> NextHop:
        if self.mx_lookup and self.is_ip:
            raise ValueError("mx_lookup needs a domain name, not an IP address")
        return self

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def postfix_form(self) -> str:
        """The next hop written as in Postfix's relayhost / transport syntax."""
        host = f"[{self.host}]" if not self.mx_lookup else self.host
        if ":" in self.host and not self.mx_lookup:
            host = f"[ipv6:{self.host}]"
        return f"{host}:{self.port}"


class Domain(_Section):
    """A domain record (Settings → Built-in MTA → Domains)."""

    name: DomainName = Field(
        description=(
            "Domain or subdomain, one record each (a record for example.com does not make "
            "sub.example.com local). Internationalised names are stored as A-labels."
        ),
    )
    local: bool = Field(
        True,
        description=(
            '"Local domain": mailgate accepts mail for this domain from any client, untrusted '
            "ones included. Mail for other domains is relayed only for trusted networks."
        ),
    )
    route: NextHop | None = Field(
        None,
        description=(
            "Manual route (next hop) for mail to this domain and, unless they have their own "
            "record, its subdomains. Without a route, the relayhost or DNS (MX) is used."
        ),
    )
    tls: TlsLevel | None = Field(
        None,
        description=(
            "TLS level for mail sent to this domain: none, may (opportunistic) or encrypt "
            "(mandatory). Empty: advanced.tls.outbound_level."
        ),
    )


class MainSettings(_Section):
    """Settings → Built-in MTA → Main settings."""

    hostname: HostName = Field(
        default_factory=lambda: socket.getfqdn() or "localhost",
        description=(
            "This gateway's host name: in the SMTP greeting, EHLO, Received headers and DSNs "
            "(Postfix myhostname). Default: the machine's fully qualified name."
        ),
    )
    destination: Literal["dns", "border_gateway"] = Field(
        "dns",
        description=(
            '"Message destination address": `dns` delivers by MX lookup; `border_gateway` '
            '("Send via border gateway") sends all mail to `relayhost`, except domains with '
            "their own route."
        ),
    )
    relayhost: NextHop | None = Field(
        None,
        description="The border gateway (Postfix relayhost); required for `border_gateway`.",
    )
    trusted_networks: list[Network] = Field(
        default_factory=list,
        description=(
            '"Trusted networks": IPv4/IPv6 addresses and networks (CIDR) whose clients may '
            "relay to any domain and are never verified (Postfix mynetworks). Empty: nothing "
            "is relayed beyond the local domains."
        ),
    )
    message_size_limit: int = Field(
        10_240_000,
        ge=1024,
        le=2_000_000_000,
        description="Largest message accepted, in bytes (Postfix message_size_limit).",
    )
    smtp_listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:2525"],
        description='Addresses the SMTP server listens on, as "ip:port" or "[ipv6]:port".',
    )
    web_listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:8025"],
        description=(
            "Addresses of the web interface and REST API (HTTPS when advanced.web has a "
            "certificate). Empty: no web interface on this node. Applied when mailgate "
            "restarts."
        ),
    )

    @model_validator(mode="after")
    def _relayhost_when_border(self) -> MainSettings:
        if self.destination == "border_gateway" and self.relayhost is None:
            raise ValueError("relayhost is required when destination is border_gateway")
        return self


class SmtpLimits(_Section):
    """Limits of the SMTP server, per session and per client."""

    recipient_limit: int = Field(
        1000,
        ge=1,
        description="Recipients per message; more get 452 4.5.3 (smtpd_recipient_limit).",
    )
    line_length_limit: int = Field(
        2048,
        ge=512,
        le=1_000_000,
        description="Longest SMTP command line in bytes; longer get 500 5.5.2.",
    )
    header_size_limit: int = Field(
        102_400,
        ge=1024,
        description=(
            "Largest message header section in bytes; a larger one is refused with 552 5.3.4 "
            "(Postfix header_size_limit, which truncates instead)."
        ),
    )
    hopcount_limit: int = Field(
        50, ge=1, description="Most Received headers a message may carry (hopcount_limit)."
    )
    session_timeout: Seconds = Field(
        300, description="Idle time before a session is closed with 421 4.4.2 (smtpd_timeout)."
    )
    soft_error_limit: int = Field(
        10,
        ge=0,
        description="Errors in a session after which each reply is delayed "
        "(smtpd_soft_error_limit).",
    )
    hard_error_limit: int = Field(
        20,
        ge=1,
        description="Errors in a session after which it is closed with 421 4.7.0.",
    )
    error_sleep_time: Seconds = Field(
        1, description="Delay per reply once the soft error limit is passed (seconds)."
    )
    client_connection_count_limit: int = Field(
        50,
        ge=0,
        description=(
            "Simultaneous connections per client address; 0 = no limit. Trusted networks "
            "are exempt (smtpd_client_connection_count_limit)."
        ),
    )
    client_connection_rate_limit: int = Field(
        0, ge=0, description="Connections per client per time unit; 0 = no limit."
    )
    client_message_rate_limit: int = Field(
        0, ge=0, description="Messages per client per time unit; 0 = no limit."
    )
    client_recipient_rate_limit: int = Field(
        0, ge=0, description="Recipients per client per time unit; 0 = no limit."
    )
    client_rate_time_unit: Seconds = Field(
        60, gt=0, description="Time unit of the client rate limits (anvil_rate_time_unit)."
    )


class QueueSettings(_Section):
    """Retries and lifetimes of queued mail."""

    minimal_backoff_time: Seconds = Field(
        300, description="Shortest wait before retrying a deferred message (seconds)."
    )
    maximal_backoff_time: Seconds = Field(
        4000, description="Longest wait between delivery attempts (seconds)."
    )
    maximal_queue_lifetime: Seconds = Field(
        432_000,
        description="Age after which an undeliverable message is bounced (seconds; 5 days).",
    )
    bounce_queue_lifetime: Seconds = Field(
        432_000,
        description="Age after which an undeliverable bounce (null sender) is dropped (seconds).",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> QueueSettings:
        if self.maximal_backoff_time < self.minimal_backoff_time:
            raise ValueError("maximal_backoff_time must not be below minimal_backoff_time")
        return self


class DeliverySettings(_Section):
    """The SMTP client that delivers queued mail."""

    destination_concurrency_limit: int = Field(
        20, ge=1, le=1000, description="Parallel deliveries per destination."
    )
    total_concurrency_limit: int = Field(
        100, ge=1, le=10_000, description="Parallel deliveries in all."
    )
    connect_timeout: Seconds = Field(30, description="Time to connect to a next hop (seconds).")
    command_timeout: Seconds = Field(
        300, description="Time to wait for a reply to EHLO, MAIL, RCPT, RSET (seconds)."
    )
    data_timeout: Seconds = Field(
        600, description="Time to wait for the reply after the message content (seconds)."
    )
    connection_cache_time_limit: Seconds = Field(
        2, description="How long an idle connection is kept for the next message (seconds)."
    )
    connection_reuse_time_limit: Seconds = Field(
        300, description="How long one connection may be reused for new messages (seconds)."
    )
    bind_address: IpAddress | None = Field(
        None, description="Source IPv4 address of outgoing connections (smtp_bind_address)."
    )
    bind_address6: IpAddress | None = Field(
        None, description="Source IPv6 address of outgoing connections (smtp_bind_address6)."
    )
    line_length_limit: int = Field(
        998,
        ge=0,
        le=1_000_000,
        description="Longest line sent, CRLF not counted (smtp_line_length_limit): a longer "
        "line is broken, the rest going on continuation lines that start with a space; 0: "
        "lines are sent as they are.",
    )

    @field_validator("line_length_limit")
    @classmethod
    def _line_length(cls, value: int) -> int:
        if 0 < value < MIN_LINE_LENGTH_LIMIT:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_LINE_LENGTH_LIMIT}")
        return value


class TlsSettings(_Section):
    """STARTTLS for the SMTP server (inbound) and client (outbound)."""

    cert_file: str | None = Field(
        None, description="PEM certificate chain for inbound STARTTLS (smtpd_tls_cert_file)."
    )
    key_file: str | None = Field(
        None, description="PEM private key for inbound STARTTLS (smtpd_tls_key_file)."
    )
    inbound_level: TlsLevel = Field(
        TlsLevel.MAY,
        description=(
            "none: never offer STARTTLS; may: offer it when a certificate is set; encrypt: "
            "require it before MAIL (530 5.7.0)."
        ),
    )
    outbound_level: TlsLevel = Field(
        TlsLevel.MAY,
        description=(
            "Default for outgoing mail: none, may (use STARTTLS when offered) or encrypt "
            "(defer unless offered). Domains can override it."
        ),
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.inbound_level == TlsLevel.ENCRYPT and self.cert_file is None:
            raise ValueError("inbound_level encrypt needs cert_file and key_file")
        return self


class DnsSettings(_Section):
    """The DNS resolver: MX routing, SPF, DKIM and DMARC."""

    nameservers: list[Nameserver] = Field(
        default_factory=list,
        description='Name servers as "ip" or "ip:port"; empty: /etc/resolv.conf.',
    )
    timeout: Seconds = Field(5, gt=0, description="Deadline of one DNS query (seconds).")
    cache_size: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Answers kept in memory for their TTL, negative ones included; 0: none, "
        "every lookup asks the name servers.",
    )


class RecipientVerification(_Section):
    """ "Reject messages for recipient addresses": SMTP recipient verification (Postfix
    reject_unverified_recipient and its address_verify_* parameters) and unknown domains."""

    mode: Literal["off", "reject_unverified"] = Field(
        "off",
        description=(
            'off: accept any recipient of a local domain; reject_unverified ("Reject for '
            'unverified recipients"): before answering RCPT from an untrusted client, probe '
            "the recipient's next hop and refuse what it refuses. Trusted clients are never "
            "verified."
        ),
    )
    reject_unknown_domains: bool = Field(
        False,
        description=(
            "Refuse recipients whose domain has no MX, A or AAAA record (Postfix "
            "reject_unknown_recipient_domain). Local domains are never looked up."
        ),
    )
    reject_code: Literal[450, 550] = Field(
        550,
        description=(
            "Reply code for an address the next hop refuses (Postfix "
            "unverified_recipient_reject_code); 450 makes the sender retry."
        ),
    )
    unknown_domain_reject_code: Literal[450, 550] = Field(
        550,
        description="Reply code for a domain that does not exist (unknown_address_reject_code).",
    )
    show_reason: bool = Field(
        True,
        description="Show the next hop's own reply text to the client in the refusal.",
    )
    probe_sender: str | None = Field(
        None,
        description=(
            "Envelope sender of probes (address_verify_sender). Empty: the default, "
            '"double-bounce@" and the host name; "<>" for the null sender.'
        ),
    )
    probe_timeout: Seconds = Field(
        5, gt=0, description="Deadline of one probe, connection included (seconds)."
    )
    positive_expire_time: Seconds = Field(
        31 * 86400, description="How long an accepted address is known good (seconds; 31 days)."
    )
    positive_refresh_time: Seconds = Field(
        7 * 86400,
        description="Age after which a known-good address is probed again in the background.",
    )
    negative_expire_time: Seconds = Field(
        3 * 86400, description="How long a refused address is remembered (seconds; 3 days)."
    )
    negative_refresh_time: Seconds = Field(
        3 * 3600,
        description="Age after which a refused address is probed again in the background.",
    )
    temporary_expire_time: Seconds = Field(
        5,
        description=(
            "How long a temporary failure (next hop down, 4xx) is remembered (seconds). "
            "Postfix keeps it for hours; mailgate for seconds, so good addresses are accepted "
            "again as soon as the next hop is back."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> RecipientVerification:
        if self.positive_refresh_time > self.positive_expire_time:
            raise ValueError("positive_refresh_time must not exceed positive_expire_time")
        if self.negative_refresh_time > self.negative_expire_time:
            raise ValueError("negative_refresh_time must not exceed negative_expire_time")
        if self.probe_sender not in (None, "", "<>"):
            try:
                parse_path(self.probe_sender, allow_null=False)
            except AddressError as exc:
                raise ValueError(f"probe_sender {self.probe_sender!r} is not an address") from exc
        return self

    def sender(self, hostname: str) -> str:
        """The probe's envelope sender ("" for the null sender)."""
        if self.probe_sender in (None, ""):
            return f"double-bounce@{hostname}"
        return "" if self.probe_sender == "<>" else self.probe_sender


class WebSettings(_Section):
    """The web interface and REST API."""

    cert_file: str | None = Field(
        None, description="PEM certificate chain: serve HTTPS (applied when mailgate restarts)."
    )
    key_file: str | None = Field(None, description="PEM private key for the certificate.")
    session_hours: float = Field(
        12, gt=0, le=24 * 30, description="A login session lasts this long without use (hours)."
    )

    @model_validator(mode="after")
    def _pair(self) -> WebSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class AdvancedSettings(_Section):
    """Settings → Built-in MTA → Advanced settings."""

    web: WebSettings = Field(default_factory=WebSettings, description="Web interface and REST API.")

    verification: RecipientVerification = Field(
        default_factory=RecipientVerification,
        description="Recipient verification and unknown recipient domains.",
    )

    limits: SmtpLimits = Field(default_factory=SmtpLimits, description="SMTP server limits.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="Queue and retries.")
    delivery: DeliverySettings = Field(
        default_factory=DeliverySettings, description="Outgoing SMTP client."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="STARTTLS.")
    dns: DnsSettings = Field(default_factory=DnsSettings, description="DNS resolver.")


class Config(_Section):
    """The whole configuration of a mailgate installation (or cluster)."""

    domains: list[Domain] = Field(
        default_factory=list, description="Domain records: local domains and routes."
    )
    main: MainSettings = Field(default_factory=MainSettings, description="Main settings.")
    advanced: AdvancedSettings = Field(
        default_factory=AdvancedSettings, description="Advanced settings."
    )
    protection: Protection = Field(
        default_factory=Protection, description="Scan modules and their engines."
    )
    rules: list[Rule] = Field(
        default_factory=list,
        description="Rules, tried top to bottom; the first enabled match wins.",
    )
    default_rule: Rule = Field(
        default_factory=default_rule, description="The rule for mail no other rule matches."
    )

    @field_validator("rules")
    @classmethod
    def _unique_rules(cls, rules: list[Rule]) -> list[Rule]:
        names = [r.name for r in rules]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"rule name {name!r} is used twice")
        return rules

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, domains: list[Domain]) -> list[Domain]:
        seen: dict[str, int] = {}
        for index, domain in enumerate(domains):
            if domain.name in seen:
                raise ValueError(
                    f"{domain.name} is listed twice (domains[{seen[domain.name]}] and "
                    f"domains[{index}])"
                )
            seen[domain.name] = index
        return domains

    def domain(self, name: str) -> Domain | None:
        for domain in self.domains:
            if domain.name == name:
                return domain
        return None


class ConfigError(ValueError):
    """A configuration was refused; `errors` name each bad field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-")) or part in ("str", "int"):
            continue
        else:
            out += f".{part}" if out else part
    return out or "config"


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per bad field: "main.trusted_networks[0]: 'x' is not an ... network"."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_location(tuple(error['loc']))}: {message}")
    return lines


def validate(data: Any) -> Config:
    """Build a Config from plain data, or raise ConfigError naming every bad field."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None
