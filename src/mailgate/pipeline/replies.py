"""Engine answers are listened for one at a time, the slowest engine's first.

Anti-Virus and Anti-Spam send their request as soon as the message is in, and clamd and Rspamd
work on it in parallel. If each check then listened for its own answer, the event loop would
sleep on both sockets and wake once per engine; on a quiet gateway a wake-up costs far more
than the code it runs (cold caches and a virtual CPU to resume: 50-300 us measured on the
benchmark machine for what takes ~10 us warm, see bench/protection.py). Here a check that has
sent its request waits for its *turn* before it listens: the loop sleeps on one socket, the
one expected to answer last, and finds the other answers already waiting when it wakes. The
engines' latency is unchanged: the requests are all in flight from the start.

The order is learned across messages. It starts with Anti-Spam (Rspamd runs its whole rule set
on a message, more work than a signature scan of the same bytes); a module that still had to
wait for its engine when its turn came answered after the one before it, and moves ahead of
it for the next messages.

Nothing waits for its turn beyond half its own deadline: then it listens anyway, as it would
without turns. A module whose check ends without taking its turn (it could not connect, say)
gives it up when its check ends (`Turns.release`, called by the pipeline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from mailgate.pipeline.settle import settle

__all__ = ["FIRST_ORDER", "WAITED", "ReplyOrder", "Turn", "Turns"]

# Modules that take turns, in the order tried first.
FIRST_ORDER = ("antispam", "antivirus")
# A turn that took longer than this to get its answer was waiting for the engine, not reading
# an answer that was there already (which takes one pass of the loop).
WAITED = 0.002


class ReplyOrder:
    """The order in which engine answers are listened for, kept across messages (one per
    pipeline)."""

    def __init__(self, order: Iterable[str] = FIRST_ORDER) -> None:
        self._order = list(order)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self._order)

    def for_message(self, modules: Iterable[str]) -> Turns:
        """The turns of one message whose checks are `modules` (others take no turn)."""
        running = set(modules)
        return Turns(self, [module for module in self._order if module in running])

    def waited(self, module: str) -> None:
        """`module`'s engine answered after the one before it: listen for it earlier."""
        index = self._order.index(module)
        if index > 0:
            self._order[index - 1], self._order[index] = module, self._order[index - 1]


class Turns:
    """One message's turns: the n-th module listens once the (n-1)-th has its answer."""

    def __init__(self, order: ReplyOrder, modules: list[str]) -> None:
        self._order = order
        self._modules = modules
        self._done: dict[str, asyncio.Future[None]] = {}

    def turn(self, module: str, timeout: float) -> Turn:
        """The turn of `module`, whose check has `timeout` seconds in all."""
        return Turn(self, module, timeout / 2)

    def ready(self, module: str) -> bool:
        """Whether `module` may listen now (its predecessors have their answers)."""
        return self._before(module) is None

    def release(self, module: str) -> None:
        """`module` has its answer, or will not listen for one: the next one's turn."""
        if module not in self._modules:
            return
        future = self._done.get(module)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._done[module] = loop.create_future()
        if not future.done():
            future.set_result(None)

    def releaser(self, module: str) -> Callable[[object], None]:
        """`release` of `module` as a done callback (of its check's task)."""
        return lambda _: self.release(module)

    def _before(self, module: str) -> asyncio.Future[None] | None:
        """The unfinished predecessor's future, or None when `module`'s turn has come."""
        if module not in self._modules:
            return None
        index = self._modules.index(module)
        if index == 0:
            return None
        previous = self._modules[index - 1]
        future = self._done.get(previous)
        if future is None:
            future = self._done[previous] = asyncio.get_running_loop().create_future()
        return None if future.done() else future

    def _waited(self, module: str) -> None:
        if module in self._modules and self._modules.index(module) > 0:
            self._order.waited(module)


class Turn:
    """``async with turn:`` waits for the turn (at most ``patience`` seconds), and gives it to
    the next module on leaving."""

    def __init__(self, turns: Turns, module: str, patience: float) -> None:
        self._turns = turns
        self._module = module
        self._patience = patience
        self._began = 0.0

    @property
    def ready(self) -> bool:
        return self._turns.ready(self._module)

    async def __aenter__(self) -> None:
        before = self._turns._before(self._module)
        if before is not None:
            await settle([before], self._patience)  # leaves `before` as it is
        self._began = time.monotonic()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and time.monotonic() - self._began > WAITED:
            self._turns._waited(self._module)
        self._turns.release(self._module)
