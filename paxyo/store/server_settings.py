"""Database server settings that this workload pays dearly for when they are off.

Every check rewrites its order's row a few times, so on PostgreSQL ``orders`` gathers dead row
versions as fast as orders are checked (about 10,000 a second at 1,000,000 open orders and a
300 s interval). With ``autovacuum`` off nothing removes them: indexes grow, the planner's
due-order query slows, and the server spent 0.21 rather than 0.12 CPU-seconds per 1,000 checks
in ``bench/scale.py``. Said once at start (dispatcher) and in ``paxyo status``.
"""

from __future__ import annotations

from sqlalchemy import Engine

AUTOVACUUM_OFF = ("PostgreSQL autovacuum is off: dead row versions of orders pile up (a few "
                  "per check) and slow every check; turn it on (its default) in the server's "
                  "configuration")


def warnings_for(dialect: str, autovacuum: str | None) -> list[str]:
    """What to tell the operator about these server settings."""
    if dialect == "postgresql" and (autovacuum or "").strip().lower() == "off":
        return [AUTOVACUUM_OFF]
    return []


def server_warnings(engine: Engine) -> list[str]:
    """Read the settings that matter from the server behind ``engine`` (one query on
    PostgreSQL, none elsewhere)."""
    dialect = engine.dialect.name
    if dialect != "postgresql":
        return []
    with engine.connect() as conn:
        autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar()
    return warnings_for(dialect, autovacuum)
