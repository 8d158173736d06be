"""What happens to a message once its content is received: the stage between the end of DATA
and the 250 reply. Today: store it durably and hand it to the scheduler; the scanning pipeline
joins here, so that a verdict can still be a 5xx to the client.
"""

from __future__ import annotations

import logging

from mailgate.queue.scheduler import Scheduler
from mailgate.queue.spool import NoStorage
from mailgate.smtp import codes
from mailgate.types import Envelope, Reply

log = logging.getLogger("mailgate.cleanup")


class Intake:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.accepted = 0

    async def accept(self, envelope: Envelope, content: bytes) -> Reply:
        try:
            await self.scheduler.enqueue(envelope, content)
        except NoStorage:
            log.error("%s: reject: insufficient storage for the message", envelope.qid)
            return codes.NO_STORAGE
        except OSError as exc:
            log.error("%s: reject: queue file write error: %s", envelope.qid, exc)
            return codes.QUEUE_WRITE_ERROR
        self.accepted += 1
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], helo=<%s> (queue active)",
            envelope.qid, envelope.sender, envelope.size, len(envelope.recipients),
            envelope.client.name, envelope.client.ip, envelope.client.helo,
        )  # fmt: skip
        return codes.queued(envelope.qid)
