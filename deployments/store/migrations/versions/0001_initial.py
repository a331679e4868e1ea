"""The first schema: tenants, API keys, hourly usage and the keys' revision.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIMITS = ("rpm", "tpm", "max_concurrent", "daily_tokens")
COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cache_hits",
    "rate_limited",
    "errors",
)
# Migrations are frozen in time: they spell out their columns rather than import the models.
UTC_DATETIME = sa.DateTime(timezone=True)


def _limit_columns() -> list[sa.Column]:
    return [sa.Column(name, sa.BigInteger(), nullable=True) for name in LIMITS]


def upgrade() -> None:
    meta = op.create_table(
        "meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("id = 1", name="ck_meta_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_meta"),
    )
    op.bulk_insert(meta, [{"id": 1, "revision": 0}])
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(128), nullable=False),
        *_limit_columns(),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        *_limit_columns(),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=True),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name="fk_api_keys_tenant_tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])
    op.create_table(
        "usage",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("hour", UTC_DATETIME, nullable=False),
        *[
            sa.Column(name, sa.BigInteger(), server_default="0", nullable=False)
            for name in COUNTERS
        ],
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_usage_key_id_api_keys"),
        sa.PrimaryKeyConstraint("key_id", "model", "hour", name="pk_usage"),
    )
    op.create_index("ix_usage_hour", "usage", ["hour"])


def downgrade() -> None:
    op.drop_table("usage")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    op.drop_table("meta")
