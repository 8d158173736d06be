"""`SpfMemo`: a kept SPF result is reused only while every DNS answer it came from is the same."""

from __future__ import annotations

import asyncio

from mailgate.auth.spf import SpfMemo, SpfRecord, SpfResult, check_spf
from mailgate.dns import DnsNotFound, DnsTempError


class Zone:
    """TXT and A records by name, changeable between checks; counts the questions asked."""

    def __init__(self) -> None:
        self.txt: dict[str, list[str]] = {}
        self.a: dict[str, list[str]] = {}
        self.broken: set[str] = set()
        self.questions = 0

    async def lookup(self, name: str, rtype: str) -> list[SpfRecord]:
        self.questions += 1
        name = name.lower().rstrip(".")
        if name in self.broken:
            raise DnsTempError(name, "SERVFAIL")
        if name not in self.txt and name not in self.a:
            raise DnsNotFound(name, "NXDOMAIN")
        if rtype == "TXT":
            return [SpfRecord(name, "TXT", (t.encode(),)) for t in self.txt.get(name, [])]
        if rtype == "A":
            return [SpfRecord(name, "A", a) for a in self.a.get(name, [])]
        return []


def check(zone: Zone, memo: SpfMemo, ip: str = "192.0.2.1") -> SpfResult:
    return asyncio.run(check_spf(ip, "mx.example.org", "alice@example.org", zone, memo=memo))


def test_a_kept_result_is_reused_while_the_records_are_the_same() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 include:_spf.example.org -all"]
    zone.txt["_spf.example.org"] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert check(zone, memo).result == "pass"
    assert (memo.hits, len(memo)) == (0, 1)
    assert check(zone, memo).result == "pass"
    assert memo.hits == 1


def test_a_changed_record_anywhere_in_the_chain_is_seen_at_once() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 include:_spf.example.org -all"]
    zone.txt["_spf.example.org"] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert check(zone, memo).result == "pass"
    zone.txt["_spf.example.org"] = ["v=spf1 ip4:198.51.100.0/24 -all"]
    result = check(zone, memo)
    assert result.result == "fail"
    assert memo.hits == 0
    assert check(zone, memo) == result
    assert memo.hits == 1


def test_a_name_that_comes_into_existence_changes_the_result() -> None:
    zone, memo = Zone(), SpfMemo()
    assert check(zone, memo).result == "none"  # NXDOMAIN, kept
    zone.txt["example.org"] = ["v=spf1 ip4:192.0.2.1 -all"]
    assert check(zone, memo).result == "pass"
    assert memo.hits == 0


def test_another_client_address_is_checked_on_its_own() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 ip4:192.0.2.1 -all"]
    assert check(zone, memo, "192.0.2.1").result == "pass"
    assert check(zone, memo, "192.0.2.2").result == "fail"
    assert (memo.hits, len(memo)) == (0, 2)


def test_results_a_dns_error_took_part_in_are_not_kept() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 a:broken.example.org ip4:192.0.2.1 -all"]
    zone.broken.add("broken.example.org")
    assert check(zone, memo).result == "temperror"
    assert len(memo) == 0
    zone.broken.clear()
    zone.a["broken.example.org"] = ["198.51.100.7"]
    assert check(zone, memo).result == "pass"


def test_a_dns_error_while_recalling_runs_the_check_in_full() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 a:host.example.org -all"]
    zone.a["host.example.org"] = ["192.0.2.1"]
    assert check(zone, memo).result == "pass"
    zone.broken.add("host.example.org")
    assert check(zone, memo).result == "temperror"
    assert (memo.hits, len(memo)) == (0, 0)


def test_records_with_the_time_macro_are_not_kept() -> None:
    zone, memo = Zone(), SpfMemo()
    zone.txt["example.org"] = ["v=spf1 -all exp=explain.example.org"]
    zone.txt["explain.example.org"] = ["Refused at %{t}"]
    assert check(zone, memo).result == "fail"
    assert len(memo) == 0


def test_the_memo_keeps_at_most_its_size_least_recently_used_first() -> None:
    zone, memo = Zone(), SpfMemo(size=2)
    zone.txt["example.org"] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    for last in (1, 2, 1, 3):  # .1 used again, so .2 is the one to go
        check(zone, memo, f"192.0.2.{last}")
    assert len(memo) == 2
    asked = zone.questions
    check(zone, memo, "192.0.2.1")
    assert memo.hits == 2  # .1 reused twice
    check(zone, memo, "192.0.2.2")
    assert memo.hits == 2
    assert zone.questions > asked
