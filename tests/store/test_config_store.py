"""The configuration store on both backends: migrations, revisions, conflicts, validated edits.

Every test runs on SQLite (a file in tmp_path) and on PostgreSQL. PostgreSQL tests use a
database created for this test session (dropped at the end) and a schema of their own inside
it, so they never depend on what an earlier run left behind. The server must be running (the
project's test command starts it): when it is not reachable, the tests fail, they do not skip.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, event, inspect

from mailgate.config import service as edits
from mailgate.config.model import Config, ConfigError, Domain, NextHop, validate
from mailgate.config.repository import ConfigRepository, ConflictError, Revision
from mailgate.config.service import ConfigService
from mailgate.store.db import make_engine
from mailgate.store.migrate import current_version, ensure_schema, head, upgrade
from mailgate.store.schema import SCHEMA_HEAD

# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def repo(migrated: Engine) -> ConfigRepository:
    return ConfigRepository(migrated)


@pytest.fixture
def service(repo: ConfigRepository) -> ConfigService:
    return ConfigService(repo)


def _sample_config() -> Config:
    return validate(
        {
            "domains": [
                {"name": "Example.COM", "route": {"host": "127.0.0.30", "port": 2525}},
                {"name": "other.example", "local": False, "tls": "encrypt"},
            ],
            "main": {
                "hostname": "gw.example.com",
                "destination": "border_gateway",
                "relayhost": {"host": "border.example.net", "port": 2525, "mx_lookup": True},
                "trusted_networks": ["192.168.0.0/24", "2001:db8::/32"],
            },
            "advanced": {"limits": {"recipient_limit": 500}},
        }
    )


# -- migrations -------------------------------------------------------------------------------


def test_schema_head_constant_is_alembic_head() -> None:
    assert head() == SCHEMA_HEAD


def test_upgrade_creates_schema_at_head(engine: Engine) -> None:
    assert current_version(engine) is None
    upgrade(engine)
    assert current_version(engine) == SCHEMA_HEAD
    assert inspect(engine).has_table("config_revisions")


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    upgrade(engine)
    repo = ConfigRepository(engine)
    saved = repo.save(_sample_config(), parent=None, author="test", comment="before")
    upgrade(engine)
    assert current_version(engine) == SCHEMA_HEAD
    current = repo.current()
    assert current is not None
    assert current.id == saved.id
    assert current.config == _sample_config()


def test_ensure_schema_migrates_in_a_child_process(engine: Engine, store_url: str) -> None:
    ensure_schema(store_url, engine)
    assert current_version(engine) == SCHEMA_HEAD
    ensure_schema(store_url, engine)  # already at head: nothing to do
    assert current_version(engine) == SCHEMA_HEAD
    assert ConfigRepository(engine).current() is None


# -- repository -------------------------------------------------------------------------------


def test_empty_store_has_no_current(repo: ConfigRepository) -> None:
    assert repo.current() is None
    assert repo.current_id() is None
    assert repo.history() == []
    assert repo.get(1) is None


def test_first_save_is_revision_one_and_round_trips(repo: ConfigRepository) -> None:
    config = _sample_config()
    saved = repo.save(config, parent=None, author="alice", comment="first")
    assert saved.id == 1
    current = repo.current()
    assert current is not None
    assert current.id == 1
    assert current.author == "alice"
    assert current.comment == "first"
    assert current.config == config
    assert current.created_at.tzinfo is not None
    assert repo.current_id() == 1


def test_default_config_round_trips(repo: ConfigRepository) -> None:
    repo.save(Config(), parent=None, author="test", comment="")
    current = repo.current()
    assert current is not None
    assert current.config == Config()


def test_stale_parent_conflicts_and_stores_nothing(repo: ConfigRepository) -> None:
    first = repo.save(Config(), parent=None, author="a", comment="one")
    second = repo.save(_sample_config(), parent=first.id, author="b", comment="two")
    with pytest.raises(ConflictError):
        repo.save(Config(), parent=first.id, author="c", comment="stale")
    with pytest.raises(ConflictError):
        repo.save(Config(), parent=None, author="c", comment="not first")
    with pytest.raises(ConflictError):
        repo.save(Config(), parent=second.id + 1, author="c", comment="from the future")
    assert [r.id for r in repo.history()] == [second.id, first.id]
    current = repo.current()
    assert current is not None
    assert current.id == second.id
    assert current.config == _sample_config()


def test_history_newest_first_and_get(repo: ConfigRepository) -> None:
    parent = None
    configs = []
    for size in (2_000_000, 3_000_000, 4_000_000):
        config = validate({"main": {"hostname": "gw.example.com", "message_size_limit": size}})
        configs.append(config)
        parent = repo.save(config, parent=parent, author=f"author{size}", comment=str(size)).id
    history = repo.history()
    assert [r.id for r in history] == [3, 2, 1]
    assert [r.comment for r in history] == ["4000000", "3000000", "2000000"]
    assert [r.id for r in repo.history(limit=2)] == [3, 2]
    for revision_id, config in zip((1, 2, 3), configs, strict=True):
        revision = repo.get(revision_id)
        assert revision is not None
        assert revision.id == revision_id
        assert revision.config == config
    assert repo.get(4) is None


def _race(store_url: str, work: Callable[[ConfigRepository, int], object]) -> list[object]:
    """Run `work` in two threads, each with its own engine (as two nodes would).

    Each thread's first INSERT waits until the other has reached its own, so both have read
    the current revision before either writes: the check-then-insert really interleaves and
    the store itself must refuse one of them.
    """
    barrier = threading.Barrier(2, timeout=30)
    results: list[object] = [None, None]
    engines = [make_engine(store_url) for _ in range(2)]

    def hold_first_insert(index: int) -> Callable[..., None]:
        held = False

        def hook(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            nonlocal held
            if not held and statement.lstrip().upper().startswith("INSERT"):
                held = True
                barrier.wait()

        return hook

    def worker(index: int) -> None:
        try:
            results[index] = work(ConfigRepository(engines[index]), index)
        except Exception as exc:
            results[index] = exc

    try:
        for index, eng in enumerate(engines):
            event.listen(eng, "before_cursor_execute", hold_first_insert(index))
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a writer hung"
    finally:
        for eng in engines:
            eng.dispose()
    return results


@pytest.mark.parametrize("from_empty", [False, True], ids=["from-revision", "from-empty"])
def test_concurrent_writers_one_wins(
    repo: ConfigRepository, store_url: str, from_empty: bool
) -> None:
    parent = None if from_empty else repo.save(Config(), parent=None, author="t", comment="").id

    def save(writer: ConfigRepository, index: int) -> Revision:
        config = validate({"main": {"hostname": f"writer{index}.example.com"}})
        return writer.save(config, parent=parent, author=f"writer{index}", comment="race")

    results = _race(store_url, save)
    winners = [r for r in results if isinstance(r, Revision)]
    losers = [r for r in results if not isinstance(r, Revision)]
    assert len(winners) == 1, results
    assert len(losers) == 1, results
    assert isinstance(losers[0], ConflictError), repr(losers[0])
    current = repo.current()
    assert current is not None
    assert (current.id, current.config) == (winners[0].id, winners[0].config)
    assert len(repo.history()) == (1 if from_empty else 2)


def test_concurrent_service_edits_both_land(service: ConfigService, store_url: str) -> None:
    """ConfigService retries a conflicting save on the fresh revision: no edit is lost."""
    service.current()
    changes = [
        ("main", {"message_size_limit": 2_000_000}),
        ("advanced.limits", {"recipient_limit": 7}),
    ]

    def update(writer: ConfigRepository, index: int) -> Revision:
        section, values = changes[index]
        return ConfigService(writer).update(
            edits.set_values(section, values), author=f"writer{index}", comment="race"
        )

    results = _race(store_url, update)
    assert all(isinstance(r, Revision) for r in results), results
    config = service.current().config
    assert config.main.message_size_limit == 2_000_000
    assert config.advanced.limits.recipient_limit == 7
    # Three revisions (PostgreSQL's sequence may skip the id of the refused insert).
    assert len(service.repository.history()) == 3


# -- service ----------------------------------------------------------------------------------


def test_current_on_empty_store_creates_defaults(service: ConfigService) -> None:
    revision = service.current()
    assert revision.id == 1
    assert revision.config == Config()
    again = service.current()
    assert again.id == 1
    assert len(service.repository.history()) == 1


def test_update_applies_a_valid_edit(service: ConfigService) -> None:
    first = service.current()

    def edit(data: dict[str, Any]) -> None:
        data["main"]["trusted_networks"] = ["10.0.0.1/8", "2001:DB8::/32"]

    revision = service.update(edit, author="bob", comment="trust")
    assert revision.id == first.id + 1
    assert revision.author == "bob"
    # Validation normalises what it stores.
    assert revision.config.main.trusted_networks == ["10.0.0.0/8", "2001:db8::/32"]
    current = service.repository.current()
    assert current is not None
    assert current.config == revision.config


@pytest.mark.parametrize(
    ("section", "key", "value", "field"),
    [
        ("main", "trusted_networks", ["10.0.0.0/33"], "main.trusted_networks[0]"),
        ("main", "smtp_listen", ["127.0.0.1:70000"], "main.smtp_listen[0]"),
        ("main", "message_size_limit", 10, "main.message_size_limit"),
        ("advanced.limits", "recipient_limit", 0, "advanced.limits.recipient_limit"),
    ],
)
def test_invalid_edit_names_field_and_changes_nothing(
    service: ConfigService, section: str, key: str, value: object, field: str
) -> None:
    before = service.update(
        edits.set_values("main", {"hostname": "gw.example.com"}), author="t", comment=""
    )
    with pytest.raises(ConfigError) as info:
        service.update(edits.set_values(section, {key: value}), author="t", comment="bad")
    assert any(line.startswith(f"{field}: ") for line in info.value.errors), info.value.errors
    after = service.repository.current()
    assert after is not None
    assert after.id == before.id
    assert after.config == before.config


def test_invalid_route_port_and_domain_name(service: ConfigService) -> None:
    before = service.current()
    with pytest.raises(ConfigError) as info:
        service.update(
            edits.add_domain(
                {"name": "example.com", "route": {"host": "h.example", "port": 70000}}
            ),
            author="t",
            comment="",
        )
    assert any(e.startswith("domains[0].route.port: ") for e in info.value.errors)
    with pytest.raises(ConfigError) as info:
        service.update(edits.add_domain({"name": "bad domain"}), author="t", comment="")
    assert any(e.startswith("domains[0].name: ") for e in info.value.errors)
    after = service.repository.current()
    assert after is not None
    assert (after.id, after.config) == (before.id, before.config)


def test_noop_edit_creates_no_revision(service: ConfigService) -> None:
    first = service.current()
    same = service.update(lambda data: None, author="t", comment="nothing")
    assert same.id == first.id
    hostname = first.config.main.hostname
    same = service.update(
        edits.set_values("main", {"hostname": hostname}), author="t", comment="same value"
    )
    assert same.id == first.id
    assert len(service.repository.history()) == 1


def test_domain_edits(service: ConfigService) -> None:
    service.update(
        edits.add_domain({"name": "Example.COM", "route": {"host": "127.0.0.30", "port": 2525}}),
        author="t",
        comment="",
    )
    config = service.current().config
    assert config.domains == [
        Domain(name="example.com", route=NextHop(host="127.0.0.30", port=2525))
    ]

    before = service.current()
    with pytest.raises(ConfigError, match="already exists"):
        service.update(edits.add_domain({"name": "EXAMPLE.com"}), author="t", comment="")
    for edit in (
        edits.update_domain("nope.example", {"local": False}),
        edits.remove_domain("nope.example"),
    ):
        with pytest.raises(ConfigError, match="does not exist"):
            service.update(edit, author="t", comment="")
    assert service.current().id == before.id

    service.update(
        edits.update_domain("EXAMPLE.com", {"local": False, "route": None}), author="t", comment=""
    )
    assert service.current().config.domains == [Domain(name="example.com", local=False)]

    with pytest.raises(ConfigError) as info:
        service.update(
            edits.update_domain("example.com", {"tls": "sometimes"}), author="t", comment=""
        )
    assert any(e.startswith("domains[0].tls: ") for e in info.value.errors)

    service.update(edits.remove_domain("example.com"), author="t", comment="")
    assert service.current().config.domains == []


def test_set_values(service: ConfigService) -> None:
    revision = service.update(
        edits.set_values("advanced.limits", {"recipient_limit": 500, "hopcount_limit": 30}),
        author="t",
        comment="",
    )
    assert revision.config.advanced.limits.recipient_limit == 500
    assert revision.config.advanced.limits.hopcount_limit == 30
    before = service.current()
    with pytest.raises(ConfigError, match="no such section"):
        service.update(edits.set_values("advanced.nope", {"x": 1}), author="t", comment="")
    with pytest.raises(ConfigError, match=r"advanced\.limits\.nope: no such setting"):
        service.update(edits.set_values("advanced.limits", {"nope": 1}), author="t", comment="")
    with pytest.raises(ConfigError, match="not a section"):
        service.update(edits.set_values("main.hostname", {"x": 1}), author="t", comment="")
    assert service.current().id == before.id


def test_export_import_round_trip(service: ConfigService, tmp_path: Path) -> None:
    service.replace(_sample_config(), author="t", comment="sample")
    text = service.export_text()
    assert yaml.safe_load(text)["main"]["hostname"] == "gw.example.com"

    # Importing what was exported changes nothing, not even the revision.
    before = service.current()
    same = service.import_text(text, author="t")
    assert same.id == before.id

    # Into a fresh store: the same configuration, and the same export, byte for byte.
    other_engine = make_engine(f"sqlite:///{tmp_path}/other.db")
    try:
        upgrade(other_engine)
        other = ConfigService(ConfigRepository(other_engine))
        imported = other.import_text(text, author="importer")
        assert imported.config == _sample_config()
        assert other.export_text() == text
        assert other.repository.current() is not None
    finally:
        other_engine.dispose()


def test_import_accepts_json(service: ConfigService) -> None:
    text = json.dumps(_sample_config().model_dump(mode="json"))
    revision = service.import_text(text, author="t")
    assert revision.config == _sample_config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("main: [unclosed\n", "file: not valid YAML"),
        ("- a\n- b\n", "file: the document must be a mapping"),
        ("just a string\n", "file: the document must be a mapping"),
        ("main:\n  trusted_networks: [10.0.0.0/33]\n", "main.trusted_networks[0]: "),
        ("main:\n  smtp_listen: ['127.0.0.1:70000']\n", "main.smtp_listen[0]: "),
        ("domains:\n  - name: bad domain\n", "domains[0].name: "),
        ("mian:\n  hostname: x.example\n", "mian: "),
    ],
    ids=["bad-yaml", "list", "scalar", "network", "port", "domain", "unknown-section"],
)
def test_bad_import_changes_nothing(service: ConfigService, text: str, expected: str) -> None:
    before = service.replace(_sample_config(), author="t", comment="sample")
    with pytest.raises(ConfigError) as info:
        service.import_text(text, author="t")
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors
    after = service.repository.current()
    assert after is not None
    assert (after.id, after.config) == (before.id, before.config)
