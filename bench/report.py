"""Measurements to numbers (throughput, latency percentiles, losses), mailgate/Postfix ratios
against the project's targets, and the Markdown table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

# The project's targets, as mailgate/Postfix ratios.
E2E_TARGET_SMALL = 1.0  # 2 KB messages, 10 and 50 connections
E2E_TARGET_LARGE = 0.8  # larger messages, 10 and 50 connections
SMALL_SIZE = 2048
TARGET_CONCURRENCY = (10, 50)

Record = Sequence[float]  # index, MAIL sent, final reply, final code


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(values)))
    return values[min(rank, len(values)) - 1]


def measure(
    tag: str,
    requested: int,
    records: Iterable[Record],
    arrival_ids: Sequence[str],
    arrival_times: Sequence[float],
) -> dict[str, Any]:
    """Throughput, latency and losses of one run from the generator's records and the sink's
    arrivals (``time.monotonic()`` in both, the same clock machine-wide)."""
    accepted: dict[str, tuple[float, float]] = {}
    refused = failed = sent = 0
    first_command = math.inf
    for record in records:
        index, started, ended, code = record
        sent += 1
        first_command = min(first_command, started)
        if code == 250:
            accepted[f"{tag}.{int(index)}"] = (started, ended)
        elif code == 0:
            failed += 1
        else:
            refused += 1
    prefix = tag + "."
    first_arrival: dict[str, float] = {}
    ours = 0
    for message_id, arrived in zip(arrival_ids, arrival_times, strict=True):
        if not message_id.startswith(prefix):
            continue
        ours += 1
        if message_id not in first_arrival:
            first_arrival[message_id] = arrived
    latencies = sorted(1000 * (ended - started) for started, ended in accepted.values())
    last_reply = max((ended for _, ended in accepted.values()), default=math.nan)
    delivered = [first_arrival[key] for key in accepted if key in first_arrival]
    last_arrival = max(delivered, default=math.nan)
    accept_seconds = last_reply - first_command
    e2e_seconds = last_arrival - first_command
    count = len(accepted)
    return {
        "requested": requested,
        "sent": sent,
        "unsent": requested - sent,
        "accepted": count,
        "refused": refused,
        "failed": failed,
        "accepted_per_s": count / accept_seconds if accept_seconds > 0 else math.nan,
        "e2e_per_s": count / e2e_seconds if e2e_seconds > 0 else math.nan,
        "accept_seconds": accept_seconds,
        "e2e_seconds": e2e_seconds,
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else math.nan,
            "mean": sum(latencies) / len(latencies) if latencies else math.nan,
        },
        "arrived": len(delivered),
        "lost": count - len(delivered),
        "duplicated": ours - len(first_arrival),
        "unexpected": sum(1 for key in first_arrival if key not in accepted),
    }


def summarise(runs: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[dict[str, Any]]:
    """One row per system and scenario over its repeated runs: medians of rates and latency
    percentiles, the largest peak PSS, and the sums of lost and duplicated messages."""
    groups: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for run in runs:
        rank = systems.index(run["system"]) if run["system"] in systems else len(systems)
        groups.setdefault((run["size"], run["concurrency"], rank), []).append(run)
    rows = []
    for key in sorted(groups):
        group = groups[key]
        good = [run for run in group if "error" not in run]
        if not good:
            rows.append(dict(group[0], repeats=0, failed_runs=len(group)))
            continue
        e2e = [run["e2e_per_s"] for run in good]
        largest = max(good, key=lambda run: run["peak_pss_kib"])
        rows.append(
            {
                "system": good[0]["system"],
                "size": good[0]["size"],
                "concurrency": good[0]["concurrency"],
                "repeats": len(good),
                "failed_runs": len(group) - len(good),
                "accepted_per_s": median([run["accepted_per_s"] for run in good]),
                "e2e_per_s": median(e2e),
                "e2e_range": [min(e2e), max(e2e)],
                "latency_ms": {
                    "p50": median([run["latency_ms"]["p50"] for run in good]),
                    "p99": median([run["latency_ms"]["p99"] for run in good]),
                },
                "peak_pss_kib": largest["peak_pss_kib"],
                "peak_processes": largest["peak_processes"],
                "peak_pss_anon_kib": max(run["peak_pss_anon_kib"] for run in good),
                "peak_rss_kib": max(run["peak_rss_kib"] for run in good),
                "cpu_ms_per_message": median([run["cpu_ms_per_message"] for run in good]),
                "cpu_user_ms_per_message": median(
                    [run.get("cpu_user_ms_per_message", math.nan) for run in good]
                ),
                "cpu_system_ms_per_message": median(
                    [run.get("cpu_system_ms_per_message", math.nan) for run in good]
                ),
                "accepted": sum(run["accepted"] for run in good),
                "lost": sum(run["lost"] for run in good),
                "duplicated": sum(run["duplicated"] for run in good),
                "generator_cpu": [max(max(run["generator_cpu"]) for run in good)],
            }
        )
    return rows


def median(values: Sequence[float | None]) -> float:
    """The median of the numbers among ``values`` (None and NaN left out); NaN if none."""
    ordered = sorted(
        value for value in values if isinstance(value, int | float) and not math.isnan(value)
    )
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def ratios(mailgate: dict[str, Any], postfix: dict[str, Any]) -> dict[str, Any]:
    """mailgate/Postfix for one scenario, and which targets hold."""
    size, concurrency = mailgate["size"], mailgate["concurrency"]
    result: dict[str, Any] = {
        "size": size,
        "concurrency": concurrency,
        "accepted_per_s": _ratio(mailgate["accepted_per_s"], postfix["accepted_per_s"]),
        "e2e_per_s": _ratio(mailgate["e2e_per_s"], postfix["e2e_per_s"]),
        "p50_ms": _ratio(mailgate["latency_ms"]["p50"], postfix["latency_ms"]["p50"]),
        "p99_ms": _ratio(mailgate["latency_ms"]["p99"], postfix["latency_ms"]["p99"]),
        "peak_pss": _ratio(mailgate["peak_pss_kib"], postfix["peak_pss_kib"]),
        "peak_pss_anon": _ratio(mailgate["peak_pss_anon_kib"], postfix["peak_pss_anon_kib"]),
    }
    targets: dict[str, bool] = {}
    if concurrency in TARGET_CONCURRENCY:
        floor = E2E_TARGET_SMALL if size <= SMALL_SIZE else E2E_TARGET_LARGE
        targets[f"e2e>={floor:g}x"] = result["e2e_per_s"] >= floor
    targets["p99<=1x"] = result["p99_ms"] <= 1.0
    targets["pss<=1x"] = result["peak_pss"] <= 1.0
    targets["no loss"] = mailgate["lost"] == 0 and mailgate["duplicated"] == 0
    result["targets"] = targets
    return result


def _size(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def _num(value: float, digits: int = 0) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _spread(row: dict[str, Any]) -> str:
    if row.get("repeats", 1) < 2:
        return ""
    low, high = row["e2e_range"]
    return f" ({_num(low)}-{_num(high)})"


def markdown(rows: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]]) -> str:
    """The result rows (see :func:`summarise`) and the ratios as Markdown tables."""
    lines = [
        "| size | conns | system | accepted msg/s | e2e msg/s | p50 ms | p99 ms "
        "| peak PSS MiB (anon) | procs | CPU ms/msg (user+sys) | lost | dup | gen CPU |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in rows:
        if "error" in run:
            lines.append(
                f"| {_size(run['size'])} | {run['concurrency']} | {run['system']} "
                f"| failed: {run['error'][:80]} | | | | | | | | | |"
            )
            continue
        latency = run["latency_ms"]
        lines.append(
            f"| {_size(run['size'])} | {run['concurrency']} | {run['system']} "
            f"| {_num(run['accepted_per_s'])} | {_num(run['e2e_per_s'])}{_spread(run)} "
            f"| {_num(latency['p50'], 1)} | {_num(latency['p99'], 1)} "
            f"| {_num(run['peak_pss_kib'] / 1024, 1)} ({_num(run['peak_pss_anon_kib'] / 1024, 1)})"
            f" | {run['peak_processes']} "
            f"| {_num(run['cpu_ms_per_message'], 2)} ({_num(run['cpu_user_ms_per_message'], 2)}+"
            f"{_num(run['cpu_system_ms_per_message'], 2)}) "
            f"| {run['lost']} | {run['duplicated']} "
            f"| {_num(100 * max(run['generator_cpu'], default=math.nan))}% |"
        )
    if comparisons:
        lines += [
            "",
            "mailgate / Postfix (throughput: higher is better; latency and memory: lower is "
            "better)",
            "",
            "| size | conns | accepted | e2e | p50 | p99 | peak PSS (anon) | targets |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for item in comparisons:
            verdicts = ", ".join(
                f"{name} {'ok' if held else 'MISSED'}" for name, held in item["targets"].items()
            )
            lines.append(
                f"| {_size(item['size'])} | {item['concurrency']} "
                f"| {_num(item['accepted_per_s'], 2)} | {_num(item['e2e_per_s'], 2)} "
                f"| {_num(item['p50_ms'], 2)} | {_num(item['p99_ms'], 2)} "
                f"| {_num(item['peak_pss'], 2)} ({_num(item['peak_pss_anon'], 2)}) | {verdicts} |"
            )
    return "\n".join(lines) + "\n"
