"""Run the scan modules a message needs, concurrently and within a deadline, and turn their
verdicts into one decision per rule group (the strictest action of all modules wins).

A module runs when it is enabled (Protection settings) and at least one recipient's rule
scans (mode "modules"). A module that fails, times out or is cut off by the overall deadline
reports Verdict.ERROR, and the rule's error action applies: tempfail by default, so nothing
unscanned slips through.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from mailgate.config.model import Config
from mailgate.config.protection import Action, Rule, strictest
from mailgate.metrics import Counters
from mailgate.pipeline.api import Check, CheckResult, RealClient, ScanContext, Verdict
from mailgate.pipeline.replies import ReplyOrder
from mailgate.pipeline.rules import group_recipients
from mailgate.pipeline.settle import settle
from mailgate.types import ClientInfo, Envelope

log = logging.getLogger("mailgate.pipeline")

# The rule field that holds each (module, verdict)'s action.
_ACTION_FIELD = {
    ("antivirus", Verdict.INFECTED): "infected",
    ("antispam", Verdict.SPAM): "spam",
    ("antispam", Verdict.PROBABLE_SPAM): "probable_spam",
    ("phishing", Verdict.PHISHING): "phishing",
    ("content", Verdict.BLOCKED_ATTACHMENT): "blocked_attachment",
    ("content", Verdict.CONTENT_MATCH): "content_match",
    ("auth", Verdict.DMARC_REJECT): "dmarc_reject",
    ("auth", Verdict.DMARC_QUARANTINE): "dmarc_quarantine",
    ("auth", Verdict.SPF_FAIL): "spf_fail",
}
MODULES = ("antivirus", "antispam", "phishing", "content", "auth")


def action_for(rule: Rule, result: CheckResult) -> Action:
    """What `rule` does with this module's verdict."""
    if result.verdict is Verdict.CLEAN:
        return Action.SKIP
    actions = getattr(rule, result.module)
    name = "error" if result.verdict is Verdict.ERROR else _ACTION_FIELD.get(
        (result.module, result.verdict)
    )  # fmt: skip
    if name is None:  # a verdict this module does not give: treat as a scanner error
        return Action(actions.error)
    return Action(getattr(actions, name))


@dataclass(slots=True)
class GroupDecision:
    """What happens to the recipients under one rule."""

    rule: Rule
    indices: list[int]
    action: Action
    reasons: list[str] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    subject_tag: str | None = None
    remove_parts: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Decision:
    results: dict[str, CheckResult]
    groups: list[GroupDecision]
    context: ScanContext

    @property
    def verdicts(self) -> dict[str, str]:
        return {m: f"{r.verdict}" + (f" ({r.detail})" if r.detail else "")
                for m, r in self.results.items()}  # fmt: skip


def enabled_modules(config: Config) -> list[str]:
    protection = config.protection
    services = protection.external_services
    enabled = {
        "antivirus": protection.antivirus.enabled,
        "antispam": protection.antispam.enabled,
        "phishing": protection.phishing.enabled,
        "content": protection.content.enabled,
        "auth": services.use_spf or services.use_dkim or services.use_dmarc,
    }
    return [m for m in MODULES if enabled[m]]


class Pipeline:
    def __init__(self, checks: dict[str, Check], counters: Counters) -> None:
        self.checks = checks
        self.counters = counters
        self.replies = ReplyOrder()

    async def aclose(self) -> None:
        """Release what the checks hold between messages (those with an ``aclose``)."""
        for check in self.checks.values():
            close = getattr(check, "aclose", None)
            if close is not None:
                await close()

    async def decide(
        self,
        config: Config,
        envelope: Envelope,
        content: bytes,
        client: ClientInfo,
        real_client: RealClient,
    ) -> Decision:
        groups = group_recipients(
            config.rules,
            config.default_rule,
            envelope.sender,
            [r.address for r in envelope.recipients],
            client.ip,
        )
        scanning = any(g.rule.mode == "modules" for g in groups)
        modules = [m for m in enabled_modules(config) if m in self.checks] if scanning else []
        ctx = ScanContext(envelope, content, client, real_client, config.main.hostname,
                          config.protection, turns=self.replies.for_message(modules))  # fmt: skip
        results = await self._run(ctx, modules, config.protection.scan_timeout)
        decisions = [self._group(g.rule, g.indices, results) for g in groups]
        return Decision(results, decisions, ctx)

    async def locate(self, decision: Decision) -> set[int]:
        """The MIME parts that carry what the modules found, when a module could only say
        "somewhere in the message" (clamd scans the whole stream): each module that can
        look part by part (a `locate` method) is asked."""
        parts: set[int] = set()
        for module, result in decision.results.items():
            if not result.positive or result.parts:
                continue
            locate = getattr(self.checks.get(module), "locate", None)
            if locate is not None:
                parts.update(await locate(decision.context))
        return parts

    async def _run(
        self, ctx: ScanContext, modules: list[str], deadline: float
    ) -> dict[str, CheckResult]:
        if not modules:
            return {}
        loop = asyncio.get_running_loop()
        tasks = {m: loop.create_task(self.checks[m].scan(ctx)) for m in modules}
        if ctx.turns is not None:
            for module, task in tasks.items():  # a check that ends gives up its turn
                task.add_done_callback(ctx.turns.releaser(module))
        await settle(tasks.values(), deadline)
        pending = [task for task in tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        results = {}
        for module, task in tasks.items():
            if task in pending:
                result = CheckResult(module, Verdict.ERROR, f"no answer within {deadline:g}s")
            elif task.exception() is not None:
                log.error("%s: %s check failed: %r", ctx.envelope.qid, module, task.exception())
                result = CheckResult(module, Verdict.ERROR, f"internal error: {task.exception()}")
            else:
                result = task.result()
            self.counters.inc(f"scan.{module}.{result.verdict}")
            results[module] = result
        return results

    @staticmethod
    def _group(rule: Rule, indices: list[int], results: dict[str, CheckResult]) -> GroupDecision:
        if rule.mode == "skip":
            return GroupDecision(rule, indices, Action.SKIP, ["rule skips scanning"])
        if rule.mode in ("reject", "delete"):
            action = Action.REJECT if rule.mode == "reject" else Action.DELETE
            return GroupDecision(rule, indices, action, [f"rule mode {rule.mode}"])
        decision = GroupDecision(rule, indices, Action.SKIP)
        actions = []
        for module, result in results.items():
            action = action_for(rule, result)
            actions.append(action)
            if action is not Action.SKIP or result.positive:
                decision.reasons.append(f"{module}: {result.verdict} {result.detail}".rstrip())
            if action is Action.DELETE_ATTACHMENT:
                decision.remove_parts.update(result.parts)
            for name, value in result.headers:
                if name.lower() == "authentication-results" or rule.x_headers:
                    decision.headers.append((name, value))
        decision.action = strictest(actions)
        if rule.x_headers and results:
            decision.headers.append(("X-Mailgate-Rule", rule.name))
        spam = results.get("antispam")
        if spam is not None and decision.action in (Action.SKIP, Action.DELETE_ATTACHMENT):
            if spam.verdict is Verdict.SPAM:
                decision.subject_tag = rule.spam_tag or None
            elif spam.verdict is Verdict.PROBABLE_SPAM:
                decision.subject_tag = rule.probable_spam_tag or None
        return decision
