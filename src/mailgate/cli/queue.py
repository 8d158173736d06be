"""`mailgate queue`: list, show, flush, hold, release and delete queued mail."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from mailgate.cli.common import Context, fail
from mailgate.queue.manager import QueueError, QueueManager
from mailgate.queue.spool import Spool


def _local(ctx: Context) -> QueueManager:
    return QueueManager(Spool(ctx.paths.spool))


def _run(ctx: Context, op: str, **args: Any) -> Any:
    """Through the running gateway when there is one, else on the spool directly."""
    result = ctx.call(f"queue.{op}", **args)
    if result is not None:
        return result
    manager = _local(ctx)
    try:
        if op == "list":
            return [item.to_json() for item in manager.list()]
        if op == "show":
            item, content = manager.show(args["qid"])
            return {"item": item.to_json(), "content": content.decode("utf-8", "replace")}
        if op == "flush":
            return manager.flush()
        return getattr(manager, op)(args["qid"])
    except QueueError as exc:
        fail(str(exc))


@click.group()
def queue() -> None:
    """The mail queue of this node."""


@queue.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_(ctx: Context, as_json: bool) -> None:
    """List queued messages (like postqueue -p)."""
    items = _run(ctx, "list")
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("mail queue is empty")
        return
    for item in items:
        when = datetime.fromtimestamp(item["arrival"]).strftime("%a %b %d %H:%M:%S")
        head = f"{item['qid']:16} {item['size']:>8} {when}"
        click.echo(f"{head}  <{item['sender']}>  [{item['state']}]")
        for rcpt in item["recipients"]:
            reason = f"  ({rcpt['reason']})" if rcpt.get("reason") else ""
            click.echo(f"{'':26}{rcpt['address']}  {rcpt['status']}{reason}")
    click.echo(f"-- {len(items)} message(s)")


@queue.command()
@click.argument("qid")
@click.pass_obj
def show(ctx: Context, qid: str) -> None:
    """Show a message's envelope and content."""
    result = _run(ctx, "show", qid=qid)
    click.echo(json.dumps(result["item"], indent=2))
    click.echo("")
    click.echo(result["content"], nl=False)


@queue.command()
@click.pass_obj
def flush(ctx: Context) -> None:
    """Retry every deferred message now."""
    click.echo(_run(ctx, "flush"))


def _each(op: str, help_text: str) -> click.Command:
    @click.command(name=op, help=help_text)
    @click.argument("qids", nargs=-1, required=True)
    @click.pass_obj
    def command(ctx: Context, qids: tuple[str, ...]) -> None:
        targets = list(qids)
        if targets == ["ALL"]:
            targets = [item["qid"] for item in _run(ctx, "list")]
        for qid in targets:
            click.echo(_run(ctx, op, qid=qid))

    return command


queue.add_command(_each("hold", "Put messages on hold (QID... or ALL)."))
queue.add_command(_each("release", "Release held messages (QID... or ALL)."))
queue.add_command(_each("delete", "Delete messages (QID... or ALL)."))
