"""`mailgate run` (start the gateway in the foreground) and `mailgate status`."""

from __future__ import annotations

import sys

import click

from mailgate import log as logsetup
from mailgate.cli.common import Context, fail


@click.command()
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log line format.")  # fmt: skip
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Write the log here instead of standard error.")  # fmt: skip
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)  # fmt: skip
@click.pass_obj
def run(ctx: Context, log_format: str, log_file: str | None, log_level: str) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C.

    The first start creates the data directory and the store with the embedded defaults.
    """
    import uvloop

    logsetup.setup(log_format, log_level, path=log_file)
    try:
        uvloop.run(_serve(ctx))
    except RuntimeError as exc:
        fail(str(exc))


async def _serve(ctx: Context) -> None:
    from mailgate.service import Gateway

    gateway = Gateway(ctx.data_dir, ctx.store)
    try:
        await gateway.start()
    except BaseException:
        click.echo("mailgate could not start; see the log above", err=True)
        raise
    assert gateway.server is not None
    addresses = ", ".join(f"{h}:{p}" for h, p in sorted(gateway.server.bound_addresses()))
    scheme = "https" if gateway.holder.current.config.advanced.web.cert_file else "http"
    urls = gateway.web.urls if gateway.web is not None else []
    web = ", ".join(f"{scheme}://{u}/" for u in urls) or "off"
    click.echo(
        f"mailgate is running. SMTP on {addresses}. Web interface and API: {web}. "
        f"Data in {ctx.data_dir}. Stop with Ctrl-C or SIGTERM.",
        err=True,
    )
    if gateway.first_login is not None:
        name, password = gateway.first_login
        click.echo(
            f"First start: log in as {name!r} with the password {password} "
            f"(shown once; change it with: mailgate user passwd {name}).",
            err=True,
        )
    sys.stderr.flush()
    try:
        await gateway.serve_forever()
    finally:
        await gateway.stop()


@click.command()
@click.pass_obj
def status(ctx: Context) -> None:
    """Say whether the gateway runs on this node, and its configuration revision."""
    result = ctx.call("ping")
    if result is None:
        click.echo(f"mailgate is not running (data directory {ctx.data_dir})")
        sys.exit(3)
    click.echo(f"mailgate is running: pid {result['pid']}, configuration revision "
               f"{result['revision']}")  # fmt: skip
