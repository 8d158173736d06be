"""Waiting for the checks with a deadline (`mailgate.pipeline.settle`): it returns when the
last future is done or when the deadline passes, whichever is first, and never touches the
futures themselves."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.pipeline.settle import settle


def test_returns_when_the_last_future_is_done() -> None:
    async def main() -> tuple[float, list[bool]]:
        loop = asyncio.get_running_loop()
        first, last = loop.create_future(), loop.create_future()
        loop.call_later(0.01, first.set_result, 1)
        loop.call_later(0.05, last.set_result, 2)
        began = loop.time()
        await settle([first, last], 10)
        return loop.time() - began, [first.done(), last.done()]

    took, done = asyncio.run(main())
    assert done == [True, True]
    assert 0.05 <= took < 5  # the last one ended it, not the deadline


def test_returns_at_the_deadline_and_leaves_the_rest_pending() -> None:
    async def main() -> tuple[float, bool, bool, int]:
        loop = asyncio.get_running_loop()
        quick, stuck = loop.create_future(), loop.create_future()
        loop.call_later(0.01, quick.set_result, 1)
        began = loop.time()
        await settle([quick, stuck], 0.05)
        took = loop.time() - began
        cancelled = stuck.cancelled()
        stuck.set_result(3)  # still settable: nothing was done to it
        return took, quick.done(), cancelled, stuck.result()

    took, quick_done, cancelled, result = asyncio.run(main())
    assert 0.05 <= took < 5
    assert quick_done
    assert not cancelled
    assert result == 3


@pytest.mark.parametrize("done_before", [True, False])
def test_nothing_to_wait_for_returns_at_once(done_before: bool) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        futures = []
        if done_before:
            future = loop.create_future()
            future.set_result(None)
            futures.append(future)
        began = loop.time()
        await settle(futures, 10)
        return loop.time() - began

    assert asyncio.run(main()) < 1


def test_a_failed_or_cancelled_future_counts_as_done() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        failed, cancelled = loop.create_future(), loop.create_future()
        loop.call_soon(failed.set_exception, ValueError("scanner"))
        loop.call_soon(cancelled.cancel)
        async with asyncio.timeout(5):
            await settle([failed, cancelled], 10)
        assert isinstance(failed.exception(), ValueError)

    asyncio.run(main())


def test_cancelling_the_caller_stops_only_the_waiting() -> None:
    async def main() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        waiting = loop.create_task(settle([future], 10))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The future is untouched, and the waiter's callback is gone from it.
        future.set_result(None)
        await asyncio.sleep(0)
        return future.cancelled(), waiting.cancelled()

    assert asyncio.run(main()) == (False, True)
