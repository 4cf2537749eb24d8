"""Issue 15 item 11 against the running stack: the gateway's spill is private, the
stack's logs are not world-readable, and a voter cannot tell another voter's vote_id
from an unknown one."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from bench.procs import wait_until
from tests.integration.gateway_fixtures import GatewayStack
from tests.security.edge import client_headers

pytestmark = pytest.mark.integration


def _modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_spill_directories_are_0700_and_their_files_0600(edge_stack: GatewayStack) -> None:
    spill = Path(edge_stack.settings.spill_dir)
    modes = _modes(spill)
    assert any("/db/" in path for path in modes), f"no RocksDB files under {spill}"
    loose = {
        path: oct(mode)
        for path, mode in modes.items()
        if mode & 0o077 or (os.path.isdir(path) and mode != 0o700)
    }
    assert not loose, f"readable by others: {loose}"


def test_the_stacks_logs_are_not_world_readable(stack_env: dict[str, str]) -> None:
    logs = Path(stack_env.get("VOTE_STACK_DIR", "")) / "logs"
    assert logs.is_dir(), f"{logs} not found"
    readable = {
        str(path): oct(stat.S_IMODE(path.stat().st_mode))
        for path in logs.iterdir()
        if path.is_file() and path.stat().st_mode & 0o004
    }
    assert not readable, f"world-readable logs (run `deploy/local/stack up`): {readable}"
    assert not logs.stat().st_mode & 0o004, "anyone can list the log directory"


def test_another_voters_vote_id_answers_like_an_unknown_one(edge_stack: GatewayStack) -> None:
    base = f"{edge_stack.base_url}/v1/elections/{edge_stack.election}/votes"
    owner, other = (f"status-{uuid.uuid4().hex[:8]}" for _ in range(2))
    vote_id = uuid.uuid4().hex
    cast = httpx.post(
        base,
        json={"vote_id": vote_id, "choice": edge_stack.candidates[0]},
        headers={
            "authorization": f"Bearer {edge_stack.token(owner, jti=vote_id)}",
            **client_headers(),
        },
        timeout=30,
    )
    assert cast.status_code == 202, cast.text

    def status(voter: str, of: str) -> httpx.Response:
        return httpx.get(
            f"{base}/{of}",
            headers={"authorization": f"Bearer {edge_stack.token(voter)}", **client_headers()},
            timeout=30,
        )

    # Once the vote is stored its owner sees it counted ...
    wait_until(
        "the owner's vote counted",
        lambda: status(owner, vote_id).json().get("status") == "counted",
        120,
    )
    # ... and anyone else gets exactly what an unknown vote_id gets.
    theirs = status(other, vote_id)
    unknown = status(other, uuid.uuid4().hex)
    assert theirs.status_code == unknown.status_code
    assert {k: v for k, v in theirs.json().items() if k != "vote_id"} == {
        k: v for k, v in unknown.json().items() if k != "vote_id"
    }
