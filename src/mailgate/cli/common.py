"""What every CLI command shares: where the node's data is, the store, and error reporting."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from mailgate import control
from mailgate.config.model import ConfigError
from mailgate.config.repository import ConfigRepository, ConflictError, Revision
from mailgate.config.service import ConfigService, Edit
from mailgate.service import Paths


@dataclass
class Context:
    data_dir: Path
    store: str | None
    _service: ConfigService | None = field(default=None, repr=False)

    @property
    def paths(self) -> Paths:
        return Paths(self.data_dir)

    def config_service(self) -> ConfigService:
        if self._service is None:
            from mailgate.store.db import make_engine
            from mailgate.store.migrate import current_version, upgrade
            from mailgate.store.schema import SCHEMA_HEAD

            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = self.paths.store_url(self.store)
            engine = make_engine(url)
            if current_version(engine) != SCHEMA_HEAD:
                upgrade(engine)
            self._service = ConfigService(ConfigRepository(engine))
        return self._service

    def change(self, edit: Edit, comment: str) -> Revision:
        """Apply an edit, report it, and have a running gateway apply it now."""
        try:
            revision = self.config_service().update(edit, author=author(), comment=comment)
        except ConfigError as exc:
            fail_config(exc)
        except ConflictError as exc:
            fail(str(exc))
        click.echo(f"saved: configuration revision {revision.id}")
        self.notify()
        return revision

    def notify(self) -> None:
        socket_path = self.paths.control_socket
        if not socket_path.exists():
            return
        try:
            result = control.call(socket_path, "reload", timeout=10)
        except (OSError, control.ControlError, ValueError):
            click.echo("the gateway is not running here; it will use this at start")
            return
        click.echo(f"applied to the running gateway (revision {result['revision']})")

    def call(self, op: str, **args: Any) -> Any:
        """Ask the running gateway; None when it does not run on this node."""
        socket_path = self.paths.control_socket
        if not socket_path.exists():
            return None
        try:
            return control.call(socket_path, op, **args)
        except control.ControlError as exc:
            fail(str(exc))
        except (OSError, ValueError):
            return None


def author() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def fail_config(exc: ConfigError) -> NoReturn:
    for line in exc.errors:
        click.echo(f"error: {line}", err=True)
    click.echo("nothing was changed", err=True)
    sys.exit(2)


def parse_value(text: str) -> Any:
    """A setting's value as typed on the command line: YAML scalars and lists."""
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_assignments(items: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{item!r}: expected KEY=VALUE", 2)
        out[key.strip()] = parse_value(value)
    return out
