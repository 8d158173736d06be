"""Waiting for futures with a deadline, for the pipeline's per-message path.

`asyncio.wait` does this with a set of futures, a done callback that looks each one up and
a result of two sets; on a path run once per message and per engine answer that bookkeeping
is a measurable share of the pipeline's own CPU (bench/protection.py). `settle` keeps only
what the pipeline needs: one waiter, a counter and one timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["settle"]


async def settle(futures: Collection[asyncio.Future[Any]], within: float) -> None:
    """Return once every one of ``futures`` is done, or after ``within`` seconds, whichever
    comes first. The futures are left as they are (none is cancelled), as `asyncio.wait`
    leaves them; cancelling the caller only stops the waiting."""
    pending = [future for future in futures if not future.done()]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    left = len(pending)

    def one_done(_: object) -> None:
        nonlocal left
        left -= 1
        if left == 0 and not waiter.done():
            waiter.set_result(None)

    for future in pending:
        future.add_done_callback(one_done)
    timer = loop.call_later(within, _wake, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
        for future in pending:
            future.remove_done_callback(one_done)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
