"""Throw-away PostgreSQL databases for benchmarks (and the integration tests) that need
an empty schema.

``python -m bench processor`` and ``python -m bench batchcost`` each measure on a fresh,
migrated database of the stack's server, so earlier runs' rows and autovacuum state
don't enter the figures, and drop it afterwards.
"""

from __future__ import annotations

import uuid

import psycopg


def create(admin_dsn: str, prefix: str = "vote_bench") -> tuple[str, str]:
    """Create and migrate a database; returns its name and DSN."""
    from processor.migrate import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    try:
        migrate(dsn)
    except BaseException:
        drop(admin_dsn, name)
        raise
    return name, dsn


def drop(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
