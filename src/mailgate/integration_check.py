"""The integration check (`mailgate check`, SPEC section 4.3): the seed's scheme tested against
the live network, each problem reported with what to fix.

The checks follow the seed's procedure (SPEC section 1): local domains set, the relayhost (the
border gateway) answers, every route answers and every local domain has one, the trusted
networks do not contain the border gateway, no Reject action behind a border gateway, and
recipient verification reaches the internal servers. Network steps use the delivery and probe
code itself (`queue/delivery.py`, `verify/service.py`), so what answers here answers for real
mail; each step is bounded by a timeout and nothing raises out of `run_checks`: a check that
breaks becomes a failed finding with its message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shlex
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Literal

from mailgate.config.model import Config, split_host_port
from mailgate.config.protection import Action, Rule
from mailgate.dns import DnsError, DnsPythonResolver, Resolver
from mailgate.pipeline.runner import enabled_modules
from mailgate.policy.relay import ipv4_view, overlaps
from mailgate.queue.delivery import Deliverer, DestinationFailure
from mailgate.queue.routing import Destination, Router
from mailgate.smtp.client import ConnectionFailed
from mailgate.verify.cache import Entry
from mailgate.verify.service import probe_once

Status = Literal["ok", "warn", "fail"]
Probe = Callable[[Config, str, None], Awaitable[Entry]]

# A name that can never have a domain record of its own (RFC 2606): its next hop is the
# relayhost, as for any domain without a route.
_ANY_DOMAIN = "mailgate-check.invalid"
_LOOP_DSN = "5.4.6"
_ROUTE_FIX = "mailgate domain set {name} --route HOST[:PORT]"
_TRUSTED_FIX = "mailgate settings main --trusted-network NETWORK (repeat; replaces the list)"


@dataclass(frozen=True, slots=True)
class Finding:
    """One result: what was checked, ok/warn/fail, what was seen, and what to do ("" when ok)."""

    name: str
    status: Status
    detail: str
    fix: str = ""


async def run_checks(
    config: Config,
    *,
    resolver: Resolver | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - one bound per network step, not for the whole
    probe: Probe = probe_once,
) -> list[Finding]:
    """Every check, the network ones concurrently, in the order of the seed's procedure.

    `resolver` serves the relayhost, routes and border addresses (default: the configured
    name servers); `probe` is the verification callout (`probe_once`, which builds its own
    resolver from the configuration). `timeout` bounds each network step."""
    bounded = bounded_config(config, timeout)
    deliverer = Deliverer(
        _resolver_for(bounded, resolver), lambda: bounded, lambda: own_addresses(bounded)
    )
    hop, routed, border, verified = await asyncio.gather(
        _guard("relayhost", relayhost(bounded, deliverer, timeout)),
        _guard("routes", routes(bounded, deliverer, timeout)),
        _border_or_none(bounded, deliverer, timeout),
        _guard("verification", verification(bounded, timeout, probe)),
    )
    return [
        *_guard_sync("local domains", lambda: local_domains(bounded)),
        *hop,
        *routed,
        *_guard_sync("trusted networks", lambda: trusted_networks(bounded, border)),
        *_guard_sync("reject actions", lambda: reject_actions(bounded)),
        *verified,
    ]


def bounded_config(config: Config, within: float) -> Config:
    """The configuration with every network step (DNS query, connect, each SMTP reply, a
    probe) limited to `within`, so a silent peer is reported in the delivery code's own words
    and its connection closed by it."""
    advanced = config.advanced
    delivery = advanced.delivery.model_copy(
        update={
            "connect_timeout": min(advanced.delivery.connect_timeout, within),
            "command_timeout": min(advanced.delivery.command_timeout, within),
        }
    )
    verification = advanced.verification.model_copy(
        update={"probe_timeout": min(advanced.verification.probe_timeout, within)}
    )
    dns = advanced.dns.model_copy(update={"timeout": min(advanced.dns.timeout, within)})
    sections = {"delivery": delivery, "verification": verification, "dns": dns}
    return config.model_copy(update={"advanced": advanced.model_copy(update=sections)})


def backstop(within: float) -> float:
    """The bound of one whole next hop: its steps (each within `within`: DNS, connect,
    greeting, EHLO, STARTTLS) are bounded by the delivery code, which then says which step
    timed out; this is only so that nothing can hang."""
    return 4 * within + 1


def own_addresses(config: Config) -> set[tuple[str, int]]:
    """(ip, port) mailgate listens on: a next hop among them is a mail loop."""
    return {split_host_port(listen) for listen in config.main.smtp_listen}


def _resolver_for(config: Config, given: Resolver | None) -> Callable[[], Resolver]:
    """The resolver, built on first use as `probe_once` builds it (a missing resolv.conf then
    fails the check that needs DNS, not the whole run)."""
    made: list[Resolver] = [given] if given is not None else []

    def get() -> Resolver:
        if not made:
            dns = config.advanced.dns
            made.append(
                DnsPythonResolver(
                    list(dns.nameservers) or None, timeout=dns.timeout, cache_size=dns.cache_size
                )
            )
        return made[0]

    return get


async def _guard(name: str, step: Awaitable[list[Finding]]) -> list[Finding]:
    try:
        return await step
    except Exception as exc:  # a broken check is a finding, never a traceback
        return [Finding(name, "fail", f"the check itself failed: {exc!r}", "report this")]


async def _border_or_none(
    config: Config, deliverer: Deliverer, within: float
) -> list[tuple[str, str]]:
    try:
        return await border_networks(config, deliverer, within)
    except Exception:  # the relayhost's own finding says what is wrong with it
        return list(zip(config.protection.upstream_gateways, repeat("upstream gateway")))


def _guard_sync(name: str, step: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return step()
    except Exception as exc:  # a broken check is a finding, never a traceback
        return [Finding(name, "fail", f"the check itself failed: {exc!r}", "report this")]


# -- 1. local domains ------------------------------------------------------------------------


def local_domains(config: Config) -> list[Finding]:
    """At least one local domain: without one, mailgate accepts no mail for the inside."""
    names = [d.name for d in config.domains if d.local]
    if names:
        return [Finding("local domains", "ok", ", ".join(names))]
    return [
        Finding(
            "local domains",
            "fail",
            "none: mailgate accepts no mail for the internal servers",
            "add one: mailgate domain add DOMAIN --local --route INTERNAL-SERVER[:PORT]",
        )
    ]


# -- 2. relayhost and 3. routes --------------------------------------------------------------


def behind_border(config: Config) -> bool:
    """Mail reaches mailgate through a border gateway (relayhost set, or upstream gateways)."""
    return config.main.destination == "border_gateway" or bool(config.protection.upstream_gateways)


def relayhost_hop(config: Config) -> Destination | None:
    """The relayhost as delivery reaches it, or None when delivery goes by DNS."""
    if config.main.destination != "border_gateway" or config.main.relayhost is None:
        return None
    return Router(config).next_hop(_ANY_DOMAIN)


async def reach(deliverer: Deliverer, dest: Destination, within: float) -> str | None:
    """Connect as delivery would (greeting, EHLO, STARTTLS when due) and say QUIT; None when
    the next hop answered, else why not."""
    try:
        async with asyncio.timeout(backstop(within)):
            client = await deliverer.connect(dest)
    except TimeoutError:
        return f"no answer within {backstop(within):g}s"
    except DestinationFailure as exc:
        return exc.text
    except ConnectionFailed as exc:
        return exc.text
    except (OSError, DnsError) as exc:
        return str(exc) or type(exc).__name__
    try:
        async with asyncio.timeout(within):
            await client.quit()
    except TimeoutError:
        client.close()
    return None


async def relayhost(config: Config, deliverer: Deliverer, within: float) -> list[Finding]:
    """The border gateway answers SMTP, and is not mailgate itself."""
    if config.main.destination != "border_gateway":
        return [Finding("relayhost", "ok", "none: delivery by DNS (MX)")]
    dest = relayhost_hop(config)
    if dest is None:
        return [
            Finding(
                "relayhost",
                "fail",
                "not set: outgoing mail has nowhere to go",
                "mailgate settings main --relayhost BORDER-GATEWAY[:PORT]",
            )
        ]
    name = f"relayhost {dest}"
    error = await reach(deliverer, dest, within)
    if error is None:
        return [Finding(name, "ok", "answers (greeting and EHLO)")]
    if "loops back to myself" in error:
        fix = "the relayhost is mailgate's own listening address; set the border gateway"
    else:
        fix = (
            "start the border gateway or let it accept SMTP from mailgate (firewall, its "
            "trusted networks), or correct it"
        )
    return [
        Finding(
            name, "fail", error, f"{fix}: mailgate settings main --relayhost BORDER-GATEWAY[:PORT]"
        )
    ]


async def routes(config: Config, deliverer: Deliverer, within: float) -> list[Finding]:
    """Every route answers; every local domain has one (else its mail goes back out)."""
    router = Router(config)
    routed = [d for d in config.domains if d.route is not None]
    errors = await asyncio.gather(
        *(reach(deliverer, router.next_hop(d.name), within) for d in routed)
    )
    findings = [
        _route_finding(d.name, router.next_hop(d.name), error)
        for d, error in zip(routed, errors, strict=True)
    ]
    for domain in config.domains:
        if domain.local:
            findings.extend(unrouted(domain.name, router.next_hop(domain.name)))
    return findings


def _route_finding(domain: str, dest: Destination, error: str | None) -> Finding:
    name = f"route {domain} {dest}"
    if error is None:
        return Finding(name, "ok", "answers (greeting and EHLO)")
    fix = (
        "start the internal server or let it accept SMTP from mailgate, or correct the "
        f"route: {_ROUTE_FIX.format(name=domain)}"
    )
    return Finding(name, "fail", error, fix)


def unrouted(domain: str, dest: Destination) -> list[Finding]:
    """A local domain whose next hop is not a route of its own or of a parent domain."""
    if dest.via.startswith("route "):
        return []
    if dest.via == "relayhost":
        where = f"the relayhost {dest}, the border gateway it came from (a loop)"
    else:
        where = "its MX by DNS, likely the border gateway it came from (a loop)"
    return [
        Finding(
            f"route {domain}",
            "warn",
            f"no route: its mail goes to {where}",
            f"set a route to the internal server: {_ROUTE_FIX.format(name=domain)}",
        )
    ]


# -- 4. trusted networks ---------------------------------------------------------------------


async def border_networks(
    config: Config, deliverer: Deliverer, within: float
) -> list[tuple[str, str]]:
    """(network, what it is) for the border gateway: the upstream gateways and the relayhost's
    addresses. A relayhost that does not resolve adds none (its own finding says why)."""
    found = [(net, "upstream gateway") for net in config.protection.upstream_gateways]
    dest = relayhost_hop(config)
    if dest is None:
        return found
    try:
        async with asyncio.timeout(backstop(within)):
            pairs = await deliverer.candidates(dest)
    except (TimeoutError, DestinationFailure, DnsError):
        return found
    return found + [(ip, f"relayhost {dest}") for _, ip in pairs]


def trusted_networks(config: Config, border: Sequence[tuple[str, str]]) -> list[Finding]:
    """Trusted networks: not every address, not the border gateway, not empty."""
    trusted = [ipaddress.ip_network(n, strict=False) for n in config.main.trusted_networks]
    if not trusted:
        return [
            Finding(
                "trusted networks",
                "warn",
                "none: the internal servers cannot send mail out through mailgate",
                f"add the internal servers: {_TRUSTED_FIX}",
            )
        ]
    findings = [
        Finding(
            "trusted networks",
            "fail",
            f"{net} trusts every client: an open relay",
            f"remove {net}; list only the internal servers: {_TRUSTED_FIX}",
        )
        for net in trusted
        if ipv4_view(net).prefixlen == 0
    ]
    for text, what in border:
        gateway = ipaddress.ip_network(text, strict=False)
        for net in trusted:
            if ipv4_view(net).prefixlen > 0 and overlaps(net, gateway):
                findings.append(
                    Finding(
                        "trusted networks",
                        "fail",
                        f"{net} contains the border gateway {text} ({what}): mail from the "
                        "internet arrives through it and would be relayed anywhere (an open "
                        "relay through the border)",
                        f"remove {net}; list only the internal servers: {_TRUSTED_FIX}",
                    )
                )
    if findings:
        return findings
    listed = ", ".join(str(n) for n in trusted)
    if not border:
        return [Finding("trusted networks", "ok", f"{listed}; no border gateway configured")]
    return [Finding("trusted networks", "ok", f"{listed}; none contains the border gateway")]


# -- 5. no Reject behind a border gateway ----------------------------------------------------


def rule_rejects(rule: Rule, modules: Sequence[str]) -> list[str]:
    """What makes `rule` answer 5xx at the end of DATA: its mode, or module/verdict pairs
    (enabled modules only: a disabled one never gives a verdict)."""
    if rule.mode == "reject":
        return ["every matching message (mode reject)"]
    if rule.mode != "modules":
        return []
    found: list[str] = []
    for module in modules:
        actions = getattr(rule, module).model_dump()
        found.extend(
            f"{module}/{verdict}" for verdict, action in actions.items() if action == Action.REJECT
        )
    return found


def reject_actions(config: Config) -> list[Finding]:
    """Behind a border gateway, a Reject after DATA makes the border bounce (backscatter)."""
    if not behind_border(config):
        return [
            Finding(
                "reject actions",
                "ok",
                "no border gateway: a Reject goes to the sending server itself",
            )
        ]
    modules = enabled_modules(config)
    findings = []
    for rule in [*config.rules, config.default_rule]:
        rejects = rule_rejects(rule, modules) if rule.enabled else []
        if not rejects:
            continue
        quoted = shlex.quote(rule.name)
        if rule.mode == "reject":
            fix = f"mailgate rules set {quoted} mode=delete"
        else:
            fix = (
                f"use Delete message or Quarantine: mailgate rules set {quoted} "
                f"{rejects[0].replace('/', '.')}=delete, or in every rule: "
                "mailgate rules replace-action reject delete"
            )
        findings.append(
            Finding(
                f"rule {rule.name}",
                "warn",
                f"Reject for {', '.join(rejects)}: a reject at end of DATA makes the border "
                "gateway bounce to a sender that may be forged (backscatter)",
                fix,
            )
        )
    return findings or [Finding("reject actions", "ok", "no rule rejects after DATA")]


# -- 6. recipient verification ---------------------------------------------------------------


async def verification(config: Config, within: float, probe: Probe) -> list[Finding]:
    """Probe each local domain's next hop: postmaster must pass, a made-up address must not."""
    if config.advanced.verification.mode != "reject_unverified":
        if not behind_border(config):
            return [Finding("verification", "ok", "off (no border gateway)")]
        return [
            Finding(
                "verification",
                "warn",
                "off: the border gateway cannot refuse unknown recipients at RCPT time; their "
                "mail is accepted and then bounced to a sender that may be forged",
                "mailgate settings advanced verification.mode=reject_unverified",
            )
        ]
    router = Router(config)
    local = [d.name for d in config.domains if d.local]
    return list(
        await asyncio.gather(
            *(verify_domain(config, name, router.next_hop(name), within, probe) for name in local)
        )
    )


async def verify_domain(
    config: Config, domain: str, dest: Destination, within: float, probe: Probe
) -> Finding:
    postmaster = f"postmaster@{domain}"
    unknown = f"mailgate-check-{uuid.uuid4().hex}@{domain}"
    try:
        async with asyncio.timeout(backstop(within)):
            known_entry, unknown_entry = await asyncio.gather(
                probe(config, postmaster, None), probe(config, unknown, None)
            )
    except TimeoutError:
        return Finding(
            f"verification {domain}",
            "fail",
            f"no answer from {dest} within {backstop(within):g}s",
            f"make the internal server answer: {_ROUTE_FIX.format(name=domain)}",
        )
    return judge_verification(domain, dest, known_entry, unknown_entry)


def judge_verification(
    domain: str, dest: Destination, postmaster: Entry, unknown: Entry
) -> Finding:
    """postmaster (RFC 5321 requires it) must be "ok"; an address that cannot exist, "bad"."""
    name = f"verification {domain}"
    if postmaster.status != "ok":
        effect = "refuse (550)" if postmaster.status == "bad" else "tempfail (450)"
        return Finding(
            name,
            "fail",
            f"{postmaster.address}: {postmaster.status}: {postmaster.reply}; verification "
            f"would {effect} real recipients",
            f"let the internal server at {dest} accept RCPT from mailgate (postmaster must "
            f"exist, RFC 5321), or correct the route: {_ROUTE_FIX.format(name=domain)}",
        )
    refuse_fix = (
        "make the internal server refuse unknown recipients with 5xx at RCPT time "
        "(Postfix: local_recipient_maps or relay_recipient_maps; Exchange: "
        "recipient filtering)"
    )
    if unknown.status == "ok":
        return Finding(
            name,
            "warn",
            f"{unknown.address} was accepted: the internal server accepts every address "
            "(catch-all or no recipient check), so verification cannot refuse unknown "
            "recipients",
            refuse_fix,
        )
    if unknown.status == "temp":
        return Finding(
            name,
            "warn",
            f"{unknown.address}: temp: {unknown.reply}; unknown recipients would get 450, not 550",
            refuse_fix,
        )
    return Finding(name, "ok", f"postmaster accepted, an unknown address refused by {dest}")
