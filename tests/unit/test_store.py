"""The durable store on SQLite: keys, tenants, revisions, usage, and what many processes and a
kill -9 do to it.

The test bodies take a ``store_url`` fixture; tests/integration/test_store_postgres.py runs
the same bodies against a real PostgreSQL by providing its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from deployments.store import (
    DuplicateKeyName,
    KeyNotFound,
    Limits,
    Store,
    StoreError,
    Tenant,
    UsageDelta,
    default_url,
    hash_secret,
)
from deployments.store.migrate import HEAD, alembic_config
from deployments.store.models import Base

HOUR = datetime(2026, 5, 20, 10, tzinfo=UTC)
PROCESSES = 8


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite database (in a folder the store must create)."""
    return f"sqlite:///{tmp_path / 'state' / 'store.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


def _delta(key_id: str, model: str = "m", hour: datetime = HOUR, **counts: int) -> UsageDelta:
    return UsageDelta(key_id=key_id, tenant="default", model=model, hour=hour, **counts)


def _dump(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            tables = Base.metadata.sorted_tables
            return repr([list(connection.execute(select(t))) for t in tables])
    finally:
        engine.dispose()


def test_create_list_and_show(store: Store) -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    key, secret = store.create_key("alice", models=["tiny"], limits=Limits(rpm=5, tpm=100))
    other, _ = store.create_key("bob", tenant="acme", expires_at=expires)
    assert secret.startswith("llmc-") and len(secret) > 40
    assert key.id.startswith("key_") and len(key.id) == 16
    assert (key.name, key.tenant, key.models, key.prefix) == (
        "alice",
        "default",
        ["tiny"],
        secret[:8],
    )
    assert key.limits == Limits(rpm=5, tpm=100) and key.secret_hash == hash_secret(secret)
    assert key.created_at.tzinfo is not None and key.revoked_at is None
    assert other.expires_at == expires and other.tenant == "acme" and other.models == []
    assert store.get_key("alice") == store.get_key(key.id) == key
    assert store.get_key("bob") == other
    assert [k.name for k in store.list_keys()] == ["alice", "bob"]
    assert key.usable() and key.allows("tiny") and not key.allows("big")


def test_only_the_hash_is_stored(store: Store, store_url: str) -> None:
    _, secret = store.create_key("alice")
    _, rotated = store.rotate_key("alice")
    dump = _dump(store_url)
    assert hash_secret(rotated) in dump and not any(s[8:] in dump for s in (secret, rotated))
    if store_url.startswith("sqlite"):
        path = Path(store_url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        raw = b"".join(p.read_bytes() for p in files)
        assert hash_secret(rotated).encode() in raw  # the files read are the right ones
        assert not any(s[8:].encode() in raw for s in (secret, rotated))


def test_names_are_unique(store: Store) -> None:
    store.create_key("alice")
    revision = store.revision()
    with pytest.raises(DuplicateKeyName, match="alice"):
        store.create_key("alice", tenant="other")
    assert store.revision() == revision and len(store.list_keys()) == 1
    assert [t.name for t in store.list_tenants()] == ["default"]  # rolled back with the key


def test_unknown_refs_and_bad_input(store: Store) -> None:
    store.create_key("alice")
    for call in (store.get_key, store.revoke_key, store.rotate_key):
        with pytest.raises(KeyNotFound, match="nobody"):
            call("nobody")
    with pytest.raises(KeyNotFound):
        store.usage(key="nobody")
    for name in ("", " ", "x" * 129):
        with pytest.raises(StoreError, match="name"):
            store.create_key(name)
    with pytest.raises(StoreError, match="time zone"):
        store.create_key("naive", expires_at=datetime(2030, 1, 1))
    with pytest.raises(StoreError, match="time zone"):
        store.usage(since=datetime(2030, 1, 1))
    with pytest.raises(StoreError, match="key id"):
        store.record_usage([_delta("key_000000000000")])
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=-1)


def test_revoke_and_rotate(store: Store) -> None:
    key, secret = store.create_key("alice", limits=Limits(daily_tokens=10))
    store.record_usage([_delta(key.id, requests=2)])
    rotated, new_secret = store.rotate_key("alice")
    assert new_secret != secret and rotated.secret_hash == hash_secret(new_secret)
    assert (rotated.id, rotated.limits, rotated.prefix) == (key.id, key.limits, new_secret[:8])
    assert store.usage(key=key.id)[0].requests == 2  # usage stays with the key
    snapshot = store.snapshot()
    assert hash_secret(secret) not in snapshot.keys and hash_secret(new_secret) in snapshot.keys
    revoked = store.revoke_key(key.id)
    assert revoked.revoked_at is not None and not revoked.usable()
    assert store.revoke_key("alice").revoked_at == revoked.revoked_at  # idempotent
    assert store.list_keys(include_revoked=False) == [] and len(store.list_keys()) == 1
    with pytest.raises(StoreError, match="revoked"):
        store.rotate_key("alice")


def test_expired_keys_are_kept(store: Store) -> None:
    past = datetime(2020, 1, 1, 12, tzinfo=UTC)
    key, _ = store.create_key("old", expires_at=past.astimezone(timezone(timedelta(hours=2))))
    kept = store.get_key("old").expires_at
    assert kept == past and kept.tzinfo is not None  # kept, in UTC: the gateway refuses it
    assert not key.usable() and key.usable(now=past - timedelta(seconds=1))


def test_tenants_and_their_limits(store: Store) -> None:
    store.create_key("alice", tenant="acme")
    assert store.list_tenants() == [Tenant("acme", Limits())]
    assert store.set_tenant("acme", Limits(rpm=60, max_concurrent=2)) == Tenant(
        "acme", Limits(rpm=60, max_concurrent=2)
    )
    store.set_tenant("zeta", Limits(daily_tokens=1000))
    store.set_tenant("acme", Limits(tpm=5))  # replaces every limit
    assert store.list_tenants() == [
        Tenant("acme", Limits(tpm=5)),
        Tenant("zeta", Limits(daily_tokens=1000)),
    ]
    store.create_key("bob", tenant="zeta")
    assert store.snapshot().tenants["zeta"].limits == Limits(daily_tokens=1000)


def test_revision_moves_with_every_change_only(store: Store) -> None:
    assert store.revision() == 0
    key, _ = store.create_key("alice")
    store.set_tenant("acme", Limits(rpm=1))
    store.rotate_key("alice")
    store.revoke_key("alice")
    assert store.revision() == 4
    store.revoke_key("alice")  # no change
    store.list_keys(), store.get_key("alice"), store.snapshot(), store.list_tenants()
    store.record_usage([_delta(key.id, requests=1)])
    assert store.revision() == 4


def test_snapshot_has_every_key_by_hash_and_every_tenant(store: Store) -> None:
    alice, alice_secret = store.create_key("alice", tenant="acme", limits=Limits(rpm=3))
    bob, bob_secret = store.create_key("bob")
    store.revoke_key("bob")
    snapshot = store.snapshot()
    assert snapshot.revision == store.revision() == 3
    assert snapshot.keys[hash_secret(alice_secret)] == alice
    assert snapshot.keys[hash_secret(bob_secret)].revoked_at is not None  # refused, by name
    assert set(snapshot.tenants) == {"acme", "default"}


def test_usage_adds_up_per_key_model_and_hour(store: Store) -> None:
    alice, _ = store.create_key("alice", tenant="acme")
    bob, _ = store.create_key("bob")
    later = HOUR + timedelta(hours=3, minutes=59)
    batch = [_delta(alice.id, requests=1, prompt_tokens=10, completion_tokens=5)] * 3
    store.record_usage([*batch, _delta(alice.id, "other", later, errors=1, rate_limited=2)])
    store.record_usage([_delta(alice.id, hour=HOUR + timedelta(minutes=30), cache_hits=1)])
    store.record_usage([_delta(bob.id, hour=later, requests=7), _delta(bob.id, requests=1)])
    store.record_usage([])
    rows = {(r.key_id, r.model): r for r in store.usage()}
    first = rows[alice.id, "m"]
    assert (first.requests, first.prompt_tokens, first.completion_tokens) == (3, 30, 15)
    assert (first.cache_hits, first.tenant, first.hour) == (1, "acme", HOUR)
    other = rows[alice.id, "other"]
    assert (other.errors, other.rate_limited, other.hour) == (1, 2, HOUR + timedelta(hours=3))
    assert (rows[bob.id, "m"].requests, rows[bob.id, "m"].hour) == (8, HOUR)
    since = store.usage(since=HOUR + timedelta(hours=3, minutes=10))  # from its hour on
    assert {(r.key_id, r.model, r.requests) for r in since} == {
        (alice.id, "other", 0),
        (bob.id, "m", 7),
    }
    assert {r.model for r in store.usage(key="alice")} == {"m", "other"}
    assert {r.key_id for r in store.usage(tenant="default")} == {bob.id}
    assert store.usage(tenant="nobody") == []


def test_migration_matches_the_models(store: Store, store_url: str) -> None:
    # Imported here: child processes import this module, and Alembic is a third of that.
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD
    store.revision()  # migrates
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_a_schema_newer_than_this_code_is_refused(store: Store, store_url: str) -> None:
    store.revision()
    store.close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="newer llm-cluster"):
        Store(store_url).revision()


def test_the_sqlite_file_is_private(store: Store, store_url: str) -> None:
    store.create_key("alice")
    path = Path(store_url.removeprefix("sqlite:///"))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name + "-")]
    assert files  # the WAL and shared-memory files, open while the store is
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in [path, *files])


def _create_one(url: str, name: str, barrier) -> None:  # in a child process
    barrier.wait(timeout=60)
    Store(url).create_key(name, tenant="shared")


def test_processes_creating_keys_at_once_on_a_fresh_database(store_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    names = [f"key-{i}" for i in range(PROCESSES)]
    children = [context.Process(target=_create_one, args=(store_url, n, barrier)) for n in names]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(timeout=120)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
    assert [child.exitcode for child in children] == [0] * PROCESSES
    store = Store(store_url)
    keys = store.list_keys()
    assert sorted(k.name for k in keys) == names and len({k.id for k in keys}) == PROCESSES
    assert store.revision() == PROCESSES and store.list_tenants() == [Tenant("shared")]
    assert len(store.snapshot().keys) == PROCESSES
    store.close()


def _write_usage(url: str, key_id: str, pipe) -> None:  # in a child process
    store = Store(url)
    for i in range(1_000_000):
        # Two rows per transaction: a new one, and a running total they must always match.
        store.record_usage(
            [_delta(key_id, f"m{i}", requests=1), _delta(key_id, "total", requests=1)]
        )
        pipe.send(i)  # only after the commit returned


def test_kill_9_mid_write_loses_nothing_committed(store: Store, store_url: str) -> None:
    key, _ = store.create_key("alice")
    store.close()
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_write_usage, args=(store_url, key.id, sender))
    child.start()
    committed, deadline = -1, time.monotonic() + 60
    while (
        committed < 100
        and time.monotonic() < deadline
        and receiver.poll(deadline - time.monotonic())
    ):
        committed = receiver.recv()
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    while receiver.poll(0.2):
        committed = receiver.recv()
    assert child.exitcode == -signal.SIGKILL and committed >= 100
    after = Store(store_url)
    rows = {r.model: r.requests for r in after.usage()}
    after.close()
    written = len(rows) - 1  # every committed transaction, and perhaps one not yet reported
    assert written in (committed + 1, committed + 2) and rows["total"] == written
    assert all(rows[f"m{i}"] == 1 for i in range(committed + 1))
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_default_url_is_under_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from common.settings import get_settings

    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    try:
        assert default_url() == f"sqlite:///{tmp_path / 'state' / 'llm-cluster.db'}"
        store = Store()
        store.create_key("alice")
        store.close()
        assert (tmp_path / "state" / "llm-cluster.db").exists()
    finally:
        get_settings.cache_clear()


def test_unreachable_database_is_a_store_error_without_the_password() -> None:
    from cluster.ports import free_port

    store = Store(f"postgresql+psycopg://u:hunter2@127.0.0.1:{free_port()}/db?connect_timeout=2")
    with pytest.raises(StoreError, match="127.0.0.1") as raised:
        store.list_keys()
    assert "hunter2" not in str(raised.value)
