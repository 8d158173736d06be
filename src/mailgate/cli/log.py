"""`mailgate log`: the message log (tracking): search, and one message's whole path."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from mailgate.cli.common import Context, fail
from mailgate.tracking import MessageLog, Search


def _when(value: float) -> str:
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        fail(f"{text!r}: use an ISO date or time, e.g. 2026-11-27 or 2026-11-27T10:00", 2)


def _messages(ctx: Context) -> MessageLog:
    return MessageLog(ctx.config_service().repository.engine, node="cli")


@click.group("log")
def log_() -> None:
    """The message log: every message, its verdicts and its delivery."""


@log_.command()
@click.option("--qid", default=None)
@click.option("--sender", default=None, help="Part of the sender address.")
@click.option("--recipient", default=None, help="Part of a recipient address.")
@click.option("--subject", default=None, help="Part of the subject.")
@click.option("--client", default=None, help="Client or real client IP address.")
@click.option("--action", default=None, help="queued, rejected, deleted, quarantined...")
@click.option("--verdict", default=None, help="e.g. infected, spam, dmarc_reject.")
@click.option("--since", default=None, help="ISO date/time.")
@click.option("--until", "until_", default=None, help="ISO date/time.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def search(ctx: Context, qid: str | None, sender: str | None, recipient: str | None,
           subject: str | None, client: str | None, action: str | None, verdict: str | None,
           since: str | None, until_: str | None, limit: int, as_json: bool) -> None:  # fmt: skip
    """Find messages, newest first."""
    rows = _messages(ctx).search(Search(
        qid=qid, sender=sender, recipient=recipient, subject=subject, client=client,
        action=action, verdict=verdict, since=_since(since), until=_since(until_), limit=limit,
    ))  # fmt: skip
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no message matches")
    for row in rows:
        head = f"{_when(row['received'])}  {row['qid']}  {row['action']:12}"
        who = f"<{row['sender']}> -> {', '.join(row['recipients'])}"
        click.echo(f"{head} {who}  {row['subject'][:60]}")


@log_.command()
@click.argument("qid")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(ctx: Context, qid: str, as_json: bool) -> None:
    """One message's whole path: client, rule, verdicts, action, each delivery."""
    row = _messages(ctx).show(qid)
    if row is None:
        fail(f"{qid}: not in the message log")
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    _print(row)


def _print(row: dict[str, Any]) -> None:
    client = row["client_ip"]
    if row["real_client_source"] != "connection":
        client += f" (real client {row['real_client_ip']} from {row['real_client_source']})"
    lines = [
        f"queue id:   {row['qid']} (node {row['node']})",
        f"received:   {_when(row['received'])} from {client}, helo {row['helo']}",
        f"sender:     <{row['sender']}>",
        f"recipients: {', '.join(row['recipients'])}",
        f"subject:    {row['subject']}",
        f"size:       {row['size']}",
        f"rules:      {', '.join(row['rules']) or '-'}",
        f"action:     {row['action']} ({row['reply']})",
    ]
    for module, verdict in (row["verdicts"] or {}).items():
        lines.append(f"  {module:10} {verdict}")
    for delivery in row["deliveries"]:
        when, who = _when(delivery["time"]), delivery["recipient"]
        rest = f"{delivery['dsn']} {delivery['relay']} {delivery['detail']}"
        lines.append(f"  {when} <{who}> {delivery['status']} {rest}".rstrip())
    click.echo("\n".join(lines))
