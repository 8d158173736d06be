"""Counters of what a node did (probes, cache hits, outcomes...), for status commands, the
dashboard and metrics export. In memory, per node; reset at start."""

from __future__ import annotations

from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._values: Counter[str] = Counter()

    def inc(self, name: str, amount: int = 1) -> None:
        self._values[name] += amount

    def get(self, name: str) -> int:
        return self._values[name]

    def snapshot(self, prefix: str = "") -> dict[str, int]:
        return {k: v for k, v in sorted(self._values.items()) if k.startswith(prefix)}
