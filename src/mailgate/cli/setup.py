"""`mailgate setup`: an integration scheme applied in one step (one configuration revision)."""

from __future__ import annotations

import asyncio

import click

from mailgate.cli.common import Context, fail_config
from mailgate.config.model import ConfigError
from mailgate.config.scheme import Applied, BorderScheme, border_gateway_scheme


@click.group()
def setup() -> None:
    """Apply an integration scheme in one step."""


@setup.command("border-gateway")
@click.option("--domain", "domains", multiple=True, required=True, metavar="DOMAIN",
              help="A local domain or subdomain (repeat for several).")  # fmt: skip
@click.option("--internal", required=True, metavar="HOST[:PORT]",
              help="The internal mail server: the route of every local domain.")  # fmt: skip
@click.option("--border", required=True, metavar="HOST[:PORT]",
              help="The border gateway: mailgate's relayhost.")  # fmt: skip
@click.option("--border-mx-lookup", is_flag=True,
              help="Find the border gateway by its name's MX record.")  # fmt: skip
@click.option("--trusted-network", "trusted", multiple=True, metavar="NETWORK",
              help="A network of internal servers that may send out through mailgate "
              "(repeat). Default: the internal server's address.")  # fmt: skip
@click.option("--upstream", multiple=True, metavar="ADDRESS",
              help="The border gateway's address(es), whose XFORWARD, XCLIENT or Received "
              "header names the real client (repeat). Default: the border's address.")  # fmt: skip
@click.option("--check", "then_check", is_flag=True,
              help="Then run the integration check (`mailgate check`).")  # fmt: skip
@click.pass_obj
def border_gateway(ctx: Context, domains: tuple[str, ...], internal: str, border: str,
                   border_mx_lookup: bool, trusted: tuple[str, ...], upstream: tuple[str, ...],
                   then_check: bool) -> None:  # fmt: skip
    """The seed's integration "via a border gateway with SMTP recipient verification", every
    step at once: local domains routed to the internal server, the border gateway as
    relayhost, the trusted networks, SPF and DMARC kept on behind the border (it becomes the
    upstream gateway), Reject replaced by Delete message in every rule, and recipient
    verification. Nothing is saved if any value is refused."""
    applied = Applied()
    scheme = BorderScheme(domains, internal, border, border_mx_lookup, trusted, upstream)
    try:
        edit = border_gateway_scheme(scheme, applied)
    except ConfigError as exc:
        fail_config(exc)
    ctx.change(edit, f"setup border-gateway: {', '.join(domains)} via {border}")
    for step in applied.steps:
        click.echo(step)
    if not then_check:
        click.echo("test it against the live network: mailgate check")
        return
    from mailgate.cli.check import format_finding
    from mailgate.integration_check import run_checks

    findings = asyncio.run(run_checks(ctx.config_service().current().config))
    for finding in findings:
        click.echo(format_finding(finding))
    if any(f.status == "fail" for f in findings):
        raise click.exceptions.Exit(1)
