"""Engine answers listened for one at a time (`mailgate.pipeline.replies`): the order of the
turns, what moves a module ahead, and that no turn is waited for without end: a check that
ends without its turn, or a predecessor that never answers, cannot hold the next one up."""

from __future__ import annotations

import asyncio
import time

from mailgate.checks import http
from mailgate.config.model import validate
from mailgate.metrics import Counters
from mailgate.pipeline.api import CheckResult, RealClient, ScanContext, Verdict
from mailgate.pipeline.replies import WAITED, ReplyOrder
from mailgate.pipeline.runner import Pipeline
from mailgate.types import ClientInfo, Envelope, Recipient


def test_each_module_listens_once_the_one_before_it_has_its_answer() -> None:
    events: list[str] = []

    async def main() -> None:
        turns = ReplyOrder(("antispam", "antivirus")).for_message(["antivirus", "antispam"])
        assert turns.ready("antispam")
        assert not turns.ready("antivirus")

        async def engine(module: str, answer_after: float) -> None:
            async with turns.turn(module, 10):
                events.append(f"{module} listens")
                await asyncio.sleep(answer_after)
            events.append(f"{module} answered")

        async with asyncio.timeout(5):
            await asyncio.gather(engine("antivirus", 0), engine("antispam", 0.05))
        assert turns.ready("antivirus")

    asyncio.run(main())
    assert events == ["antispam listens", "antispam answered", "antivirus listens",
                      "antivirus answered"]  # fmt: skip


def test_a_module_still_waiting_at_its_turn_moves_ahead_for_the_next_messages() -> None:
    order = ReplyOrder(("antispam", "antivirus"))

    async def message(first_takes: float, second_takes: float) -> None:
        turns = order.for_message(["antispam", "antivirus"])
        first, second = order.order

        async def engine(module: str, takes: float) -> None:
            async with turns.turn(module, 10):
                await asyncio.sleep(takes)

        await asyncio.gather(engine(first, first_takes), engine(second, second_takes))

    # The first one waiting for its engine is the expected case: nothing changes.
    asyncio.run(message(WAITED * 5, 0))
    assert order.order == ("antispam", "antivirus")
    # The second one still waiting once it may listen: its engine is the slower one.
    asyncio.run(message(0, WAITED * 5))
    assert order.order == ("antivirus", "antispam")
    # Modules that are not running take no turn and keep their place.
    solo = order.for_message(["antispam"])
    assert solo.ready("antispam")
    assert solo.ready("antivirus")


def test_a_predecessor_that_never_answers_holds_the_turn_half_the_deadline_at_most() -> None:
    async def main() -> float:
        turns = ReplyOrder(("antispam", "antivirus")).for_message(["antispam", "antivirus"])
        began = time.monotonic()
        async with asyncio.timeout(5):
            async with turns.turn("antivirus", 0.4):  # antispam never releases its turn
                return time.monotonic() - began

    waited = asyncio.run(main())
    assert 0.19 <= waited < 2


class TurnTaking:
    """A fake engine check: sends nothing, listens in its turn, notes when."""

    def __init__(self, module: str, events: list[str], *, fails_at_once: bool = False) -> None:
        self.module, self.events, self.fails_at_once = module, events, fails_at_once

    async def scan(self, ctx: ScanContext) -> CheckResult:
        if self.fails_at_once:  # e.g. could not connect: never takes its turn
            self.events.append(f"{self.module} failed")
            return CheckResult(self.module, Verdict.ERROR, "connection refused")
        async with ctx.reply_turn(self.module, 30):
            self.events.append(f"{self.module} listens")
        return CheckResult(self.module, Verdict.CLEAN)


def test_a_check_that_ends_without_its_turn_gives_it_up_in_the_pipeline() -> None:
    events: list[str] = []
    checks = {"antispam": TurnTaking("antispam", events, fails_at_once=True),
              "antivirus": TurnTaking("antivirus", events)}  # fmt: skip
    config = validate({"protection": {"antivirus": {"enabled": True},
                                      "antispam": {"enabled": True}}})  # fmt: skip
    envelope = Envelope("QID0000000001", "alice@ext.org", [Recipient("bob@example.com",
                        "example.com")], ClientInfo("192.0.2.1"), 0.0)  # fmt: skip

    async def main() -> float:
        began = time.monotonic()
        async with asyncio.timeout(5):  # the antivirus turn would otherwise wait 15 s
            decision = await Pipeline(checks, Counters()).decide(
                config, envelope, b"Subject: x\r\n\r\nbody\r\n", envelope.client,
                RealClient("192.0.2.1", "mx.ext.org"))  # fmt: skip
        assert decision.results["antivirus"].verdict is Verdict.CLEAN
        assert decision.results["antispam"].verdict is Verdict.ERROR
        return time.monotonic() - began

    assert asyncio.run(main()) < 1
    assert events == ["antispam failed", "antivirus listens"]


def test_http_reply_is_read_in_its_turn() -> None:
    """The request goes out at once (the engine starts working); the answer, there already,
    is taken only once the turn comes."""

    async def main() -> None:
        answered = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\nmessage")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            answered.set()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        turns = ReplyOrder(("antivirus", "antispam")).for_message(["antivirus", "antispam"])
        try:
            async with asyncio.timeout(10):
                post = asyncio.ensure_future(http.post(
                    f"http://127.0.0.1:{port}/checkv2", b"message", [], limit=100,
                    turn=turns.turn("antispam", 20)))  # fmt: skip
                await answered.wait()
                for _ in range(20):
                    await asyncio.sleep(0)
                assert not post.done()
                turns.release("antivirus")
                assert await post == (200, b"{}")
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
