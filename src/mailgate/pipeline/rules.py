"""Which rule applies to which recipient (KSMG's rules model).

Rules are tried top to bottom; the first enabled rule whose sender patterns match the envelope
sender, whose recipient patterns match the recipient, and whose client networks (if any)
contain the connecting client's address, applies; otherwise the default rule does. A message
whose recipients fall under different rules is split into one group per rule, so that each is
handled by its own rule and no recipient is lost.

Patterns: "*" matches every address (the null sender too); masks like "*@example.com" or
"bob@*" match the whole address, case-insensitively; "re:REGEX" is a case-insensitive regular
expression searched in the address.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from mailgate.config.protection import Rule
from mailgate.policy.relay import client_ip


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:], re.IGNORECASE)
    return re.compile(fnmatch.translate(pattern.lower()), re.IGNORECASE)


def matches(patterns: list[str], address: str) -> bool:
    for pattern in patterns:
        if pattern == "*":
            return True
        compiled = _compiled(pattern)
        found = compiled.search(address) if pattern.startswith("re:") else compiled.match(address)
        if found:
            return True
    return False


def _in_networks(networks: list[str], ip: str) -> bool:
    if not networks:
        return True
    try:
        addr = client_ip(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n) for n in networks)


def rule_for(rules: list[Rule], default: Rule, sender: str, recipient: str, ip: str) -> Rule:
    for rule in rules:
        if (
            rule.enabled
            and matches(rule.senders, sender)
            and matches(rule.recipients, recipient)
            and _in_networks(rule.client_networks, ip)
        ):
            return rule
    return default


@dataclass(slots=True)
class Group:
    rule: Rule
    indices: list[int]


def group_recipients(
    rules: list[Rule], default: Rule, sender: str, recipients: list[str], ip: str
) -> list[Group]:
    """Recipients grouped by the rule that applies to each, in first-seen order."""
    groups: dict[int, Group] = {}
    for index, recipient in enumerate(recipients):
        rule = rule_for(rules, default, sender, recipient, ip)
        group = groups.get(id(rule))
        if group is None:
            group = groups[id(rule)] = Group(rule, [])
        group.indices.append(index)
    return list(groups.values())
