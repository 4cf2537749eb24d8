"""Versioned SQL migrations: ``python -m processor migrate``.

Files ``migrations/NNN_name.sql`` are applied in order, each in its own transaction
together with its row in ``schema_migrations``. A session-level advisory lock makes
concurrent runs (several processors starting at once, CI) wait for each other instead
of racing; an applied file whose text changed is an error, not a silent skip.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger("processor.migrate")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary constant shared by every migrate run ("vote" in ASCII).
_LOCK_KEY = 0x766F7465
_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """An applied migration was edited, or the files are misnumbered."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name not NNN_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migrations must be numbered 001.. without gaps: {versions}")
    return found


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    migrations = discover(directory)
    applied_now: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for mig in migrations:
                if mig.version in done:
                    if done[mig.version] != mig.checksum:
                        raise MigrationError(
                            f"migration {mig.version:03d}_{mig.name} was changed after it "
                            "was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    # No parameters: psycopg sends the file as one simple query, so a
                    # file may hold many statements and DO blocks.
                    conn.execute(mig.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (mig.version, mig.name, mig.checksum),
                    )
                log.info("migration applied", extra={"version": mig.version, "migration": mig.name})
                applied_now.append(mig.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
