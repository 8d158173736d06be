"""Changing the configuration: validated edits, export and import, for the CLI, API and web UI.

Every change follows one path: read the current revision, apply the edit to a plain copy,
validate the whole result, save it as a new revision made from the one read. A bad value
raises ConfigError naming the field and nothing is saved; a concurrent change is retried on
the fresh revision, so no edit silently undoes another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from mailgate.config.model import Config, ConfigError, validate
from mailgate.config.repository import ConfigRepository, ConflictError, Revision

Edit = Callable[[dict[str, Any]], None]
_CONFLICT_RETRIES = 5


class ConfigService:
    def __init__(self, repository: ConfigRepository) -> None:
        self.repository = repository

    def current(self) -> Revision:
        """The current revision; the first call on an empty store saves the defaults."""
        revision = self.repository.current()
        if revision is not None:
            return revision
        try:
            return self.repository.save(
                Config(), parent=None, author="mailgate", comment="initial configuration"
            )
        except ConflictError:
            revision = self.repository.current()
            if revision is None:
                raise
            return revision

    def update(self, edit: Edit, *, author: str, comment: str) -> Revision:
        """Apply `edit` to the current configuration and save it if it validates."""
        for _ in range(_CONFLICT_RETRIES):
            revision = self.current()
            data = revision.config.model_dump(mode="json")
            edit(data)
            config = validate(data)
            if config == revision.config:
                return revision
            try:
                return self.repository.save(
                    config, parent=revision.id, author=author, comment=comment
                )
            except ConflictError:
                continue
        raise ConflictError("configuration keeps changing; try again")

    def replace(self, config: Config, *, author: str, comment: str) -> Revision:
        def _replace(data: dict[str, Any]) -> None:
            data.clear()
            data.update(config.model_dump(mode="json"))

        return self.update(_replace, author=author, comment=comment)

    def export_text(self) -> str:
        data = self.current().config.model_dump(mode="json")
        header = "# mailgate configuration; import with: mailgate config import FILE\n"
        return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def import_text(self, text: str, *, author: str) -> Revision:
        """Replace the whole configuration with a YAML or JSON document."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"file: not valid YAML or JSON ({exc})"]) from None
        if not isinstance(data, dict):
            raise ConfigError(["file: the document must be a mapping of sections"])
        return self.replace(validate(data), author=author, comment="imported configuration")


# Edits used by the CLI, the API and the web interface. Each raises ConfigError when the
# request itself is wrong (a missing domain, a duplicate); value checks are the model's job.


def add_domain(record: dict[str, Any]) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        candidate = validate({"domains": [record]}).domains[0]
        if any(_same_domain(d, candidate.name) for d in data["domains"]):
            raise ConfigError([f"domains: {candidate.name} already exists"])
        data["domains"].append(record)

    return edit


def update_domain(name: str, changes: dict[str, Any]) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        canonical = _canonical_domain(name)
        for domain in data["domains"]:
            if _same_domain(domain, canonical):
                domain.update(changes)
                return
        raise ConfigError([f"domains: {name} does not exist"])

    return edit


def remove_domain(name: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        canonical = _canonical_domain(name)
        kept = [d for d in data["domains"] if not _same_domain(d, canonical)]
        if len(kept) == len(data["domains"]):
            raise ConfigError([f"domains: {name} does not exist"])
        data["domains"] = kept

    return edit


def set_values(section: str, changes: dict[str, Any]) -> Edit:
    """Set fields of a section given by its dotted path, e.g. "advanced.limits"."""

    def edit(data: dict[str, Any]) -> None:
        target: Any = data
        for part in section.split("."):
            if not isinstance(target, dict) or part not in target:
                raise ConfigError([f"{section}: no such section"])
            target = target[part]
        if not isinstance(target, dict):
            raise ConfigError([f"{section}: not a section"])
        for key, value in changes.items():
            if key not in target:
                raise ConfigError([f"{section}.{key}: no such setting"])
            target[key] = value

    return edit


def _canonical_domain(name: str) -> str:
    return validate({"domains": [{"name": name}]}).domains[0].name


def _same_domain(record: dict[str, Any], canonical: str) -> bool:
    return bool(record.get("name") == canonical)


# Rules. "default" names the default rule where a rule is looked up.
RULE_MODULES = ("antivirus", "antispam", "phishing", "content", "auth")


def find_rule(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name.lower() == "default":
        rule: dict[str, Any] = data["default_rule"]
        return rule
    rule_list: list[dict[str, Any]] = data["rules"]
    for rule in rule_list:
        if rule["name"] == name:
            return rule
    raise ConfigError([f"rules: no rule named {name!r}"])


def add_rule(record: dict[str, Any], position: int | None = None) -> Edit:
    """Insert a rule (1-based position; default: last, before the default rule)."""

    def edit(data: dict[str, Any]) -> None:
        if any(r["name"] == record.get("name") for r in data["rules"]):
            raise ConfigError([f"rules: {record.get('name')!r} already exists"])
        at = len(data["rules"]) if position is None else max(0, position - 1)
        data["rules"].insert(at, record)

    return edit


def update_rule(name: str, changes: dict[str, Any]) -> Edit:
    """Change a rule's fields; "module.verdict" keys set a module's action."""

    def edit(data: dict[str, Any]) -> None:
        rule = find_rule(data, name)
        for key, value in changes.items():
            section, _, field = key.rpartition(".")
            target = rule[section] if section in RULE_MODULES else rule
            if (section and section not in RULE_MODULES) or field not in target:
                raise ConfigError([f"rules.{name}.{key}: no such setting"])
            target[field] = value

    return edit


def remove_rule(name: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        kept = [r for r in data["rules"] if r["name"] != name]
        if len(kept) == len(data["rules"]):
            raise ConfigError([f"rules: no rule named {name!r}"])
        data["rules"] = kept

    return edit


def move_rule(name: str, position: int) -> Edit:
    """Move a rule to a 1-based position (1 = tried first); the default rule stays last."""

    def edit(data: dict[str, Any]) -> None:
        rule = find_rule(data, name)
        if rule is data["default_rule"]:
            raise ConfigError(["rules: the default rule is always last"])
        data["rules"].remove(rule)
        data["rules"].insert(max(0, position - 1), rule)

    return edit


def replace_action(old: str, new: str, counter: list[int] | None = None) -> Edit:
    """Replace action `old` by `new` for every module of every rule, the default included
    (and rule mode reject by delete for reject -> delete: the seed's step 5)."""

    def edit(data: dict[str, Any]) -> None:
        count = 0
        for rule in [*data["rules"], data["default_rule"]]:
            for module in RULE_MODULES:
                for verdict, action in rule[module].items():
                    if action == old:
                        rule[module][verdict] = new
                        count += 1
            if old == "reject" and new == "delete" and rule["mode"] == "reject":
                rule["mode"] = "delete"
                count += 1
        if counter is not None:
            counter[:] = [count]

    return edit
