"""Alembic environment: the URL comes from the caller's config (see paxyo.store.migrate)."""

from alembic import context

from paxyo.store.engine import open_engine
from paxyo.store.schema import metadata

config = context.config


def run_migrations_online() -> None:
    engine = open_engine(config.get_main_option("sqlalchemy.url"), pool_size=1)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
