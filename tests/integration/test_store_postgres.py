"""The store's tests against a real PostgreSQL: the bodies of tests/unit/test_store.py, run
with ``store_url`` naming a fresh database on a private server started once per module."""

from __future__ import annotations

import pytest

from tests.postgres_service import fresh_database, postgres_url
from tests.unit.test_store import (
    store,
    test_a_schema_newer_than_this_code_is_refused,
    test_create_list_and_show,
    test_expired_keys_are_kept,
    test_kill_9_mid_write_loses_nothing_committed,
    test_migration_matches_the_models,
    test_names_are_unique,
    test_only_the_hash_is_stored,
    test_processes_creating_keys_at_once_on_a_fresh_database,
    test_revision_moves_with_every_change_only,
    test_revoke_and_rotate,
    test_snapshot_has_every_key_by_hash_and_every_tenant,
    test_tenants_and_their_limits,
    test_unknown_refs_and_bad_input,
    test_usage_adds_up_per_key_model_and_hour,
)

__all__ = [  # collected here by pytest; SQLite-only tests stay in the unit module
    "postgres_url",
    "store",
    "test_a_schema_newer_than_this_code_is_refused",
    "test_create_list_and_show",
    "test_expired_keys_are_kept",
    "test_kill_9_mid_write_loses_nothing_committed",
    "test_migration_matches_the_models",
    "test_names_are_unique",
    "test_only_the_hash_is_stored",
    "test_processes_creating_keys_at_once_on_a_fresh_database",
    "test_revision_moves_with_every_change_only",
    "test_revoke_and_rotate",
    "test_snapshot_has_every_key_by_hash_and_every_tenant",
    "test_tenants_and_their_limits",
    "test_unknown_refs_and_bad_input",
    "test_usage_adds_up_per_key_model_and_hour",
]


@pytest.fixture
def store_url(postgres_url: str) -> str:
    """A fresh database per test: the bodies count revisions and keys from zero."""
    return fresh_database(postgres_url)
