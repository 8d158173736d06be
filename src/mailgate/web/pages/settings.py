"""Settings pages: Built-in MTA → Main settings and Advanced settings; General → Protection →
External services and the modules. Each is one form over sections of the configuration; Save
validates the whole configuration and applies it at once, or shows the refusal next to the
fields and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mailgate.config import service as edits
from mailgate.config.model import (
    ConfigError,
    DeliverySettings,
    DnsSettings,
    MainSettings,
    NextHop,
    QueueSettings,
    RecipientVerification,
    SmtpLimits,
    TlsSettings,
    WebSettings,
)
from mailgate.config.protection import (
    AntispamSettings,
    AntivirusSettings,
    ContentSettings,
    ExternalServices,
    PhishingSettings,
    Protection,
    QuarantineSettings,
)
from mailgate.web.pages.common import Ctx, changer, done, page, render, viewer
from mailgate.web.pages.forms import FormField, attach_errors, model_fields, read_all, relative

router = APIRouter()


@dataclass(slots=True)
class Group:
    title: str
    section: str  # the configuration section the fields belong to
    fields: list[FormField]
    intro: str = ""


def _at(data: dict[str, Any], path: str) -> dict[str, Any]:
    for part in path.split("."):
        data = data.get(part) or {}
    return data


@dataclass(frozen=True, slots=True)
class SettingsPage:
    url: str
    title: str
    section: str
    breadcrumb: str
    groups: Callable[[dict[str, Any]], list[Group]]
    edit: Callable[[list[Group], dict[str, Any]], edits.Edit]
    intro: str = ""


def _set_groups(groups: list[Group], values: dict[str, Any]) -> edits.Edit:
    """One set_values edit per group, applied together."""
    parts = [
        edits.set_values(
            g.section, {f.name[len(g.section) + 1 :]: values[f.name] for f in g.fields}
        )
        for g in groups
    ]

    def edit(data: dict[str, Any]) -> None:
        for part in parts:
            part(data)

    return edit


# -- Main settings ---------------------------------------------------------------------------


def _main_groups(data: dict[str, Any]) -> list[Group]:
    main = _at(data, "main")
    relay = main.get("relayhost") or {"port": 25}
    destination = model_fields(
        MainSettings,
        "main",
        main,
        only=["destination"],
        labels={"destination": "Message destination address"},
        choice_labels={
            "destination": {
                "dns": "Use DNS (MX records of each domain)",
                "border_gateway": "Send via border gateway",
            }
        },
        kinds={"destination": "radio"},
    )
    relayhost = model_fields(
        NextHop,
        "main.relayhost",
        relay,
        labels={
            "host": "Border gateway address",
            "port": "Border gateway port",
            "mx_lookup": "Use MX record lookup",
        },
    )
    relayhost[0].optional = True
    relayhost[0].help = (
        "The border gateway (relayhost): IPv4 (192.168.0.1), IPv6 "
        "(2607:f0d0:1002:51::4), a domain name or an FQDN. All outgoing mail "
        "goes there, except domains with their own route."
    )
    trusted = model_fields(MainSettings, "main", main, only=["trusted_networks"])
    trusted[0].help += " One address or network per line."
    general = model_fields(
        MainSettings,
        "main",
        main,
        only=["hostname", "message_size_limit"],
        labels={"hostname": "Host name", "message_size_limit": "Message size limit (bytes)"},
    )
    return [
        Group("Message destination address", "main", destination + relayhost),
        Group("Trusted networks", "main", trusted),
        Group("General", "main", general),
    ]


def _main_edit(groups: list[Group], values: dict[str, Any]) -> edits.Edit:
    flat = relative(values, "main")
    relay = relative(flat, "relayhost")
    changes = {k: v for k, v in flat.items() if not k.startswith("relayhost.")}
    changes["relayhost"] = relay if relay.get("host") else None
    return edits.set_values("main", changes)


MAIN = SettingsPage(
    "/settings/mta/main",
    "Main settings",
    "settings.main",
    "Settings → Built-in MTA",
    _main_groups,
    _main_edit,
)


# -- Advanced settings -----------------------------------------------------------------------

_SECONDS = "(seconds)"


def _seconds_labels(model: Any) -> dict[str, str]:
    """Durations are float fields, all in seconds (the pages label the others)."""
    labels = {}
    for name, info in model.model_fields.items():
        if info.annotation is float:
            labels[name] = name.replace("_", " ").capitalize() + " " + _SECONDS
    return labels


def _advanced_groups(data: dict[str, Any]) -> list[Group]:
    advanced = _at(data, "advanced")
    verification = model_fields(
        RecipientVerification,
        "advanced.verification",
        advanced.get("verification", {}),
        labels={
            "mode": "Reject messages for recipient addresses",
            "reject_unknown_domains": "Reject unknown recipient domains",
            "reject_code": "Reply code for refused addresses",
            "unknown_domain_reject_code": "Reply code for unknown domains",
            "show_reason": "Show the next hop's reason",
            "probe_sender": "Probe sender address",
            **_seconds_labels(RecipientVerification),
        },
        choice_labels={
            "mode": {
                "off": "Do not verify recipients",
                "reject_unverified": "Reject for unverified recipients",
            }
        },
    )
    return [
        Group(
            "Recipient verification",
            "advanced.verification",
            verification,
            "SMTP recipient verification (Postfix reject_unverified_recipient): a probe of "
            "the next hop before accepting RCPT from an untrusted client.",
        ),
        Group(
            "SMTP limits",
            "advanced.limits",
            model_fields(
                SmtpLimits,
                "advanced.limits",
                advanced.get("limits", {}),
                labels=_seconds_labels(SmtpLimits),
            ),
        ),
        Group(
            "Queue",
            "advanced.queue",
            model_fields(
                QueueSettings,
                "advanced.queue",
                advanced.get("queue", {}),
                labels=_seconds_labels(QueueSettings),
            ),
        ),
        Group(
            "Delivery",
            "advanced.delivery",
            model_fields(
                DeliverySettings,
                "advanced.delivery",
                advanced.get("delivery", {}),
                labels={
                    **_seconds_labels(DeliverySettings),
                    "bind_address": "Bind address (IPv4)",
                    "bind_address6": "Bind address (IPv6)",
                },
            ),
        ),
        Group(
            "TLS",
            "advanced.tls",
            model_fields(
                TlsSettings,
                "advanced.tls",
                advanced.get("tls", {}),
                labels={
                    "cert_file": "Certificate file (PEM)",
                    "key_file": "Private key file (PEM)",
                    "inbound_level": "Inbound TLS level",
                    "outbound_level": "Outbound TLS level",
                },
                choice_labels={
                    k: {
                        "none": "None",
                        "may": "May (opportunistic)",
                        "encrypt": "Encrypt (mandatory)",
                    }
                    for k in ("inbound_level", "outbound_level")
                },
            ),
        ),
        Group(
            "DNS",
            "advanced.dns",
            model_fields(
                DnsSettings,
                "advanced.dns",
                advanced.get("dns", {}),
                labels={"nameservers": "Name servers", "timeout": "Timeout (seconds)"},
            ),
        ),
        Group(
            "Web interface",
            "advanced.web",
            model_fields(
                WebSettings,
                "advanced.web",
                advanced.get("web", {}),
                only=["session_hours"],
                labels={"session_hours": "Session lifetime (hours)"},
            ),
        ),
    ]


ADVANCED = SettingsPage(
    "/settings/mta/advanced",
    "Advanced settings",
    "settings.advanced",
    "Settings → Built-in MTA",
    _advanced_groups,
    _set_groups,
)


# -- General → Protection --------------------------------------------------------------------


def _external_groups(data: dict[str, Any]) -> list[Group]:
    protection = _at(data, "protection")
    switches = model_fields(
        ExternalServices,
        "protection.external_services",
        protection.get("external_services", {}),
        labels={
            "use_spf": "Use SPF authentication",
            "use_dkim": "Use DKIM authentication",
            "use_dmarc": "Use DMARC authentication",
        },
    )
    upstream = model_fields(
        Protection,
        "protection",
        protection,
        only=["upstream_gateways"],
        labels={"upstream_gateways": "Upstream (border) gateways"},
    )
    upstream[0].help += " One address or network per line."
    return [
        Group(
            "External services",
            "protection.external_services",
            switches,
            "Behind a border gateway every message arrives from the border's address: turn "
            "SPF and DMARC off, or name the border below so they check the real client.",
        ),
        Group("Real client behind the border gateway", "protection", upstream),
    ]


EXTERNAL = SettingsPage(
    "/settings/protection/external",
    "External services",
    "settings.external",
    "Settings → General → Protection",
    _external_groups,
    _set_groups,
)


def _modules_groups(data: dict[str, Any]) -> list[Group]:
    protection = _at(data, "protection")

    def module(model: Any, name: str, title: str, labels: dict[str, str]) -> Group:
        fields = model_fields(
            model,
            f"protection.{name}",
            protection.get(name, {}),
            labels={**_seconds_labels(model), **labels},
        )
        return Group(title, f"protection.{name}", fields)

    general = model_fields(
        Protection,
        "protection",
        protection,
        only=["scan_timeout"],
        labels={"scan_timeout": "Scan deadline (seconds)"},
    )
    return [
        module(
            AntivirusSettings,
            "antivirus",
            "Anti-Virus",
            {"enabled": "Use Anti-Virus", "clamd": "clamd address"},
        ),
        module(
            AntispamSettings,
            "antispam",
            "Anti-Spam",
            {"enabled": "Use Anti-Spam", "url": "Rspamd URL", "socket": "Rspamd Unix socket"},
        ),
        module(
            ContentSettings,
            "content",
            "Content Filtering",
            {
                "enabled": "Use Content Filtering",
                "max_attachment_size": "Largest attachment (bytes)",
                "max_message_size": "Largest message (bytes)",
                "archive_expansion": "Archive expansion limit (bytes)",
            },
        ),
        module(
            PhishingSettings,
            "phishing",
            "Anti-Phishing",
            {
                "enabled": "Use Anti-Phishing",
                "domains": "Phishing domains",
                "url_patterns": "URL patterns",
            },
        ),
        module(
            QuarantineSettings,
            "quarantine",
            "Quarantine",
            {"retention_days": "Retention (days)", "max_size_mb": "Total size (MiB)"},
        ),
        Group("Scanning", "protection", general),
    ]


MODULES = SettingsPage(
    "/settings/protection/modules",
    "Protection modules",
    "settings.modules",
    "Settings → General → Protection",
    _modules_groups,
    _set_groups,
)


# -- the routes ------------------------------------------------------------------------------


def _show(
    ctx: Ctx, spec: SettingsPage, groups: list[Group], general: list[str], status: int = 200
) -> Response:
    return render(
        ctx,
        "settings.html",
        status,
        title=spec.title,
        section=spec.section,
        breadcrumb=spec.breadcrumb,
        groups=groups,
        general=general,
        action=spec.url,
    )


def _register(spec: SettingsPage) -> None:
    async def show(request: Request) -> Response:
        ctx = await viewer(request)
        return _show(ctx, spec, spec.groups(ctx.admin.config.model_dump(mode="json")), [])

    async def save(request: Request) -> Response:
        ctx = await changer(request)
        form = await request.form()
        groups = spec.groups(ctx.admin.config.model_dump(mode="json"))
        fields = [f for g in groups for f in g.fields]
        values = read_all(fields, form)
        before = ctx.admin.revision
        try:
            revision = await ctx.admin.change(
                spec.edit(groups, values), ctx.account, f"web: {spec.title.lower()}"
            )
        except ConfigError as exc:
            return _show(ctx, spec, groups, attach_errors(fields, exc.errors), 422)
        return done(spec.url, "saved" if revision.id != before else "unchanged")

    name = spec.section.replace(".", "_")
    show.__name__, save.__name__ = f"{name}_show", f"{name}_save"
    router.add_api_route(spec.url, page(show), methods=["GET"])
    router.add_api_route(spec.url, page(save), methods=["POST"])


for _spec in (MAIN, ADVANCED, EXTERNAL, MODULES):
    _register(_spec)
