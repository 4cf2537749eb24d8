"""Issue 15 item 11: files and messages that say too much.

Unit level: key files written through a fresh temporary file that never follows a planted
symlink; a password masked wherever it sits in a DSN; a 503 that does not quote RocksDB
or the OS. The gateway's own spill and log files, and vote status across voters, are
checked against the running stack in test_files_and_messages_integration.py.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from core.settings import describe
from gateway import _fast, admin
from gateway import problems as p
from gateway.acceptance import VoteAcceptor
from gateway.config import GatewaySettings
from gateway.durability import NotDurable


def test_a_key_file_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "receipt.key"
    # Someone who can write the key directory plants the old fixed temporary name.
    (tmp_path / "receipt.key.tmp").symlink_to(victim)
    admin._write_private(str(target), b"secret key bytes")
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"secret key bytes"
    assert not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_key_file_replaces_the_old_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "jwks.json"
    admin._write_private(str(target), b"old")
    admin._write_private(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert [f.name for f in tmp_path.iterdir()] == ["jwks.json"]  # no temporary left


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://vote:hunter2@db.example:5432/vote",
        "postgresql://vote:hun%40ter2@db.example/vote",
        "postgresql://db.example/vote?user=vote&password=hunter2",
        "postgresql:///vote?host=/run/postgresql&password=hunter2&sslmode=require",
        "host=/run/postgresql dbname=vote user=vote password=hunter2",
        "host=db.example password='hunter2 with spaces' dbname=vote",
        "redis://:hunter2@cache.example:6379/0",
    ],
)
def test_print_config_masks_a_password_in_any_part_of_a_dsn(dsn: str) -> None:
    shown = describe(GatewaySettings(pg_dsn=dsn, redis_url=dsn))
    for name in ("VOTE_PG_DSN", "VOTE_REDIS_URL"):
        assert "hunter2" not in str(shown[name]), shown[name]
        assert "hun%40ter2" not in str(shown[name]), shown[name]
    # Still useful: the host or socket stays readable.
    assert "example" in str(shown["VOTE_PG_DSN"]) or "/run/postgresql" in str(shown["VOTE_PG_DSN"])


def test_a_503_does_not_quote_rocksdb_or_the_os() -> None:
    class Broken:
        async def persist(self, _key: bytes, _event: bytes) -> str:
            raise NotDurable(
                "IO error: While appending to file: /srv/spill/slot-00/db/000012.log:"
                " No space left on device"
            )

    signer = _fast.EventSigner("ek1", b"e" * 32)
    acceptor = VoteAcceptor(Broken(), _fast.IdempotencyCache(10), b"k" * 32, "gw", signer)  # type: ignore[arg-type]

    async def scenario() -> p.Problem:
        with pytest.raises(p.Unavailable) as refused:
            await acceptor.accept("e1", "alice", "0123456789abcdef", "a", 1.8e9)
        return refused.value

    problem = asyncio.run(scenario())
    public = problem.body().decode()
    for leak in ("IO error", "/srv/spill", "No space left", "000012.log"):
        assert leak not in public, public
    assert problem.retry_after == 1
    assert "No space left" in problem.internal  # for the log, not the client
