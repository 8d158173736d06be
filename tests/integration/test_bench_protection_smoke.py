"""The protection benchmark (``bench/protection.py``) still runs end to end: ``python -m
bench.protection --quick`` relays a handful of messages through mailgate without scanning and
with all five modules on (a real clamd and Rspamd, SPF and DMARC through a local DNS server),
and (``--engine-load``) once more with the engines scanning the same load beside it; then
(``--interleave 1``) one mailgate process relays a segment with the modules off and one with
them on, the change imported into the running gateway in between. ``python -m
bench.pipeline_cost --quick`` runs the pipeline alone against the same engines, with each
module set.

It asserts that every module scanned every message (all clean, SPF and DMARC pass) and that
nothing was lost; it says nothing about speed.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.pipeline_cost import MODULE_SETS, WARMUP
from bench.protection import placement

from mailgate.testing.clamd import clamd_available
from mailgate.testing.rspamd import rspamd_available
from tests.integration.quick_bench import run_quick

QUICK_MESSAGES = 50  # what --quick sends per system
MODULES = ("antivirus", "antispam", "content", "phishing", "auth")


def test_quick_protection_benchmark_scans_every_message_without_losing_mail(
    tmp_path: Path,
) -> None:
    # The test command installs the engines and runs as root: their absence is a failure.
    assert clamd_available(), "Debian's clamav-daemon package is not installed"
    assert rspamd_available(), "Debian's rspamd package is not installed"
    assert os.geteuid() == 0, "Rspamd drops to its own account: run as root"
    stdout, document = run_quick(
        "bench.protection",
        tmp_path / "protection.json",
        timeout=300,
        options=["--engine-load", "--interleave", "1"],
    )
    runs = {run["system"]: run for run in document["runs"]}
    assert sorted(runs) == ["all", "core", "core-loaded", "core-paced"]
    for system, run in runs.items():
        assert "error" not in run, f"{system}: {run.get('error')}"
        assert run["problems"] == [], f"{system}: {run['problems']}"
        assert run["requested"] == QUICK_MESSAGES
        assert run["accepted"] == QUICK_MESSAGES, f"{system}: {run['client_errors']}"
        assert run["lost"] == 0, f"{system} lost {run['lost']} accepted message(s)"
        assert run["duplicated"] == 0
        assert run["peak_pss_kib"] > 0

    # The core path scans nothing; with all modules on, each scanned each message as clean.
    assert runs["core"]["scan"] == {}
    assert runs["core-paced"]["scan"] == {}
    assert runs["core-loaded"]["scan"] == {}
    full = runs["all"]
    # The core path again, offered the messages at the rate the modules allowed, and held to
    # it: n messages paced at r per second take at least (n - 1) / r seconds.
    paced = runs["core-paced"]
    assert runs["core"]["offered_per_s"] is None
    assert paced["offered_per_s"] == full["accepted_per_s"]
    assert paced["accepted_per_s"] <= paced["offered_per_s"] * QUICK_MESSAGES / (QUICK_MESSAGES - 1)
    assert full["scan"] == {module: {"clean": QUICK_MESSAGES} for module in MODULES}
    log = full["message_log"]
    assert log["records"] == QUICK_MESSAGES
    assert log["clean"] == dict.fromkeys(MODULES, QUICK_MESSAGES)
    assert log["spf_pass"] == QUICK_MESSAGES
    assert log["dmarc_pass"] == QUICK_MESSAGES
    # The SPF and DMARC passes need the records only the benchmark's DNS server publishes;
    # mailgate's resolver keeps them for their TTL (300 s), so the measured window asks the
    # server at most once for each, not once per message.
    assert full["dns_queries"].get("bench.test TXT", 0) <= 1
    assert full["dns_queries"].get("_dmarc.bench.test TXT", 0) <= 1

    assert len(document["comparisons"]) == 1
    [comparison] = document["comparisons"]
    assert comparison["overhead_ms_per_message"] == (
        full["cpu_ms_per_message"] - paced["cpu_ms_per_message"]
    )
    assert comparison["overhead_vs_unpaced_core_ms_per_message"] == (
        full["cpu_ms_per_message"] - runs["core"]["cpu_ms_per_message"]
    )
    # Beside the core path at the same rate, the engine load had clamd and Rspamd scan
    # messages, every one clean, with mailgate's own checks. It shares a CPU with the engines,
    # the load generator and the sink, which the quick run's 2 KB messages can saturate: it
    # may fall short of the rate (the report says by how much), but not below half of it.
    loaded = runs["core-loaded"]
    assert loaded["offered_per_s"] == full["accepted_per_s"]
    load = loaded["engine_load"]
    assert load["errors"] == []
    assert load["clean"] == load["scans"] >= 0.5 * QUICK_MESSAGES
    assert comparison["engine_load_share"] == load["scans"] / QUICK_MESSAGES
    assert load["cpu_seconds"] > 0
    assert loaded["engine_cpu_seconds"]["clamd"] > 0
    assert loaded["engine_cpu_seconds"]["rspamd"] > 0
    assert comparison["overhead_vs_loaded_core_ms_per_message"] == (
        full["cpu_ms_per_message"] - loaded["cpu_ms_per_message"]
    )
    assert comparison["engine_load_cpu_ms_per_scan"] == 1000 * load["cpu_seconds"] / load["scans"]
    assert "| core-loaded |" in stdout
    # By default mailgate runs on the first CPU and the engines on the others, every run alike.
    cpus = placement("apart")
    assert document["cpus"] == (cpus or "unbound")
    for system, run in runs.items():
        assert run["configuration"]["cpus"] == (cpus["mailgate"] if cpus else "unbound"), system
    # Everything else (load generators, sink, DNS server) runs on the engines' CPUs.
    assert document["harness_cpus"] == (
        cpus["engines"] if cpus else sorted(os.sched_getaffinity(0))
    )
    assert "Placement: " in stdout
    # Each mailgate run says where its CPU went: the event loop's thread and the others.
    for system, run in runs.items():
        threads = run["threads"]
        assert threads["main_user"] + threads["main_system"] > 0, system
        assert threads["main_voluntary"] > 0, system  # the loop waited for the load
    loop = comparison["threads_per_message"]
    assert loop["all"]["loop_cpu_ms"] > 0
    assert loop["control"]["loop_cpu_ms"] > 0
    assert "Where the overhead is" in stdout
    assert document["method"].startswith("overhead = CPU ms/msg")
    assert "| all |" in stdout
    assert "| core |" in stdout
    assert "| core-paced |" in stdout
    assert "overhead ms/msg" in stdout

    # In one process: a priming segment with the modules on, then off, then on, at 90% of
    # the all-modules rate; the configuration changed under the running gateway each time.
    [interleaved] = document["interleaved"]
    assert interleaved["problems"] == []
    assert interleaved["offered_per_s"] == 0.9 * full["accepted_per_s"]
    segments = interleaved["segments"]
    assert [(s.get("priming", False), s["modules_on"]) for s in segments] == [
        (True, True), (False, False), (False, True)
    ]  # fmt: skip
    priming, off, on = segments
    assert priming["accepted"] == priming["requested"] == QUICK_MESSAGES // 4
    for one in (off, on):
        assert one["accepted"] == one["requested"] == QUICK_MESSAGES
        assert one["lost"] == one["duplicated"] == 0
    assert off["scan"] == {}
    assert on["scan"] == {module: {"clean": QUICK_MESSAGES} for module in MODULES}
    assert interleaved["overhead_per_pair_ms_per_message"] == [
        on["cpu_ms_per_message"] - off["cpu_ms_per_message"]
    ]
    assert "In one process" in stdout


def test_quick_pipeline_cost_scans_every_message_with_each_module_set(tmp_path: Path) -> None:
    assert clamd_available(), "Debian's clamav-daemon package is not installed"
    assert rspamd_available(), "Debian's rspamd package is not installed"
    stdout, document = run_quick("bench.pipeline_cost", tmp_path / "cost.json", timeout=300)
    rows = document["rows"]
    assert [tuple(row["modules"]) for row in rows] == list(MODULE_SETS.values())
    for row in rows:
        assert row["problems"] == []
        assert (row["size"], row["messages"], row["in_flight"]) == (2048, 20, 1)
        assert row["clean"] == dict.fromkeys(row["modules"], WARMUP + 20)
        assert row["cpu_ms"] >= 0
    assert "| 2 KB | 1 | all |" in stdout
    assert "| 2 KB | 1 | none |" in stdout
