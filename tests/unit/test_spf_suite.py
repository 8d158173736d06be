"""The OpenSPF RFC 7208 test suite (pyspf 2.0.14's test/rfc7208-tests.yml), every case through
`mailgate.auth.spf.check_spf`, with DNS answered from each scenario's zone data.

The suite is not kept in the repository: scripts/fetch-testdata downloads it. Zone data
conventions (those of the suite's reference driver, pyspf's test/testspf.py): a bare TIMEOUT
entry makes queries for types the name has no records of time out; "TXT: NONE" means no TXT
record; a name without TXT entries serves its SPF (type 99) records as TXT too, because the
suite was written for both record types; names are case-insensitive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.auth.spf import SpfMemo, SpfRecord, SpfResult, SpfValue, check_spf
from mailgate.dns import DnsNotFound, DnsTempError

SUITE = Path(__file__).resolve().parents[2] / ".cache" / "testdata" / "rfc7208-tests.yml"
MISSING = f"{SUITE} is missing: run scripts/fetch-testdata (downloads pyspf 2.0.14's sdist)"
# The suite's explanation checks expect this as the receiver's default explanation.
DEFAULT_EXPLANATION = "DEFAULT"


@dataclass
class Case:
    name: str
    scenario: str
    data: dict[str, Any]
    zone: dict[str, list[Any]]


def _load() -> list[Case]:
    cases: list[Case] = []
    with SUITE.open("rb") as stream:
        for scenario in yaml.safe_load_all(stream):
            zone = {name.lower(): entries for name, entries in scenario["zonedata"].items()}
            for name, data in scenario["tests"].items():
                cases.append(Case(name, scenario["description"], data, zone))
    return cases


def _params() -> list[Any]:
    if not SUITE.is_file():
        return [pytest.param(None, id="suite-missing")]
    return [pytest.param(case, id=case.name) for case in _load()]


class ZoneDns:
    """An authoritative view of one scenario's zone data (an `AsyncSpfDns`)."""

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.records: dict[str, dict[str, list[SpfValue]]] = {}
        self.timeouts: set[str] = set()
        for name, entries in zonedata.items():
            by_type: dict[str, list[SpfValue]] = {}
            spf_as_txt: list[SpfValue] = []
            has_txt = False
            for entry in entries:
                if entry == "TIMEOUT":
                    self.timeouts.add(name)
                    continue
                ((rtype, value),) = entry.items()
                records = by_type.setdefault(rtype, [])
                has_txt = has_txt or rtype == "TXT"
                if value == "NONE":
                    continue  # the type is declared empty
                converted = self._value(rtype, value)
                records.append(converted)
                if rtype == "SPF":
                    spf_as_txt.append(converted)
            if not has_txt and spf_as_txt:
                by_type["TXT"] = spf_as_txt
            self.records[name] = by_type

    @staticmethod
    def _value(rtype: str, value: Any) -> SpfValue:
        if rtype in ("TXT", "SPF"):
            strings = [value] if isinstance(value, str) else list(value)
            return tuple(s.encode("utf-8") for s in strings)
        if rtype == "MX":
            preference, host = value
            return (int(preference), str(host).rstrip("."))
        return str(value).rstrip(".") if rtype in ("CNAME", "PTR") else str(value)

    async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
        answer: list[SpfRecord] = []
        key = name.lower().rstrip(".")
        seen = set()
        while True:
            if key not in self.records:
                if answer:
                    return answer  # a CNAME to a name that does not exist
                raise DnsNotFound(name, "NXDOMAIN")
            by_type = self.records[key]
            cname = by_type.get("CNAME")
            if cname and rtype != "CNAME":
                # Like an authoritative server: follow the chain in the zone, stop at a loop.
                target = str(cname[0])
                answer.append(SpfRecord(key, "CNAME", target))
                seen.add(key)
                key = target.lower()
                if key in seen:
                    return answer
                continue
            found = by_type.get(rtype, [])
            if not found and key in self.timeouts:
                raise DnsTempError(name, "timeout")
            return answer + [SpfRecord(key, rtype, v) for v in found]


def test_suite_is_complete() -> None:
    if not SUITE.is_file():
        pytest.fail(MISSING)
    cases = _load()
    assert len(cases) == len({c.name for c in cases}) == 203


@pytest.mark.parametrize("case", _params())
def test_rfc7208_suite(case: Case | None) -> None:
    """Every case, then the same check again through the memo of the first: same answer."""
    if case is None:
        pytest.fail(MISSING)
    data = case.data
    expected = data["result"] if isinstance(data["result"], list) else [data["result"]]
    memo = SpfMemo()
    dns = ZoneDns(case.zone)

    async def check() -> SpfResult:
        return await check_spf(
            str(data["host"]),
            str(data["helo"]),
            str(data["mailfrom"]),
            dns,
            default_explanation=DEFAULT_EXPLANATION,
            memo=memo,
        )

    result = asyncio.run(check())
    where = f"{case.name} ({case.scenario}, RFC 7208 {data['spec']})"
    assert result.result in expected, f"{where}: {result}"
    if "explanation" in data:
        assert result.explanation == data["explanation"], f"{where}: {result}"
    kept = len(memo)
    assert asyncio.run(check()) == result, where
    assert memo.hits == kept, f"{where}: a kept result is reused, and only a kept one"
    if result.result == "temperror":
        assert kept == 0, where
