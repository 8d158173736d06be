"""`mailgate check`: the integration check (SPEC section 4.3) against the live network, with
what to fix. Exit status 1 when any check failed; warnings alone leave it at 0."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import click

from mailgate.cli.common import Context
from mailgate.integration_check import Finding, run_checks

_LABELS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


def format_finding(finding: Finding) -> str:
    """`ok    name: detail`, and an indented `fix: ...` line when there is something to do."""
    line = f"{_LABELS[finding.status]:<6}{finding.name}: {finding.detail}"
    return f"{line}\n      fix: {finding.fix}" if finding.fix else line


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The findings as a JSON list.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              metavar="SECONDS", help="Limit of each network step.")  # fmt: skip
@click.pass_obj
def check(ctx: Context, as_json: bool, timeout: float) -> None:
    """Check the integration against the live network: local domains, relayhost, routes,
    trusted networks, Reject actions behind a border gateway, recipient verification."""
    config = ctx.config_service().current().config
    findings = asyncio.run(run_checks(config, timeout=timeout))
    if as_json:
        click.echo(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for finding in findings:
            click.echo(format_finding(finding))
    if any(f.status == "fail" for f in findings):
        raise click.exceptions.Exit(1)
