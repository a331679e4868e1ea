"""Alembic's entry point for the store's migrations (run by deployments.store.migrate).

Online, it migrates the connection the caller passes in ``config.attributes["connection"]``,
inside the caller's transaction and lock. Offline (``alembic upgrade --sql`` with a
``sqlalchemy.url`` option) it prints the SQL, for operators who apply schema changes by hand.
"""

from __future__ import annotations

from alembic import context

from deployments.store.models import Base

config = context.config


def run_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the store's migrations through deployments.store.migrate")
    # render_as_batch: SQLite alters tables by copying them; later migrations need it.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
