"""Schema migrations (``paxyo db upgrade``), run through Alembic's API."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

MIGRATIONS = Path(__file__).with_name("migrations")


class MigrationError(Exception):
    """The database could not be reached or migrated: one line naming it and what failed."""


def database_label(database_url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an unparseable URL)"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` up to ``revision``; safe to run repeatedly.

    Raises :class:`MigrationError` when the database cannot be reached (or a migration fails).
    """
    try:
        command.upgrade(alembic_config(database_url), revision)
    except (SQLAlchemyError, ImportError) as exc:  # ImportError: the URL's driver is missing
        raise MigrationError(f"cannot migrate the database at {database_label(database_url)}: "
                             f"{_reason(exc)}") from exc


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from paxyo.store.engine import open_engine

    engine = open_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy's wrapping and links left out)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__
