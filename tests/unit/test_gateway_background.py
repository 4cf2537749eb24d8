"""gateway.app.keep_running: a background loop of the worker that raises is logged and
started again, and one that returns or is cancelled ends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.app import keep_running


def test_a_loop_that_raises_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"bug number {len(runs)}")

    with caplog.at_level(logging.ERROR, logger="gateway"):
        asyncio.run(asyncio.wait_for(keep_running("drainer", flaky, restart_after_s=0), 5))
    assert len(runs) == 3  # two failures, then a clean return ends it
    failures = [r for r in caplog.records if r.getMessage().startswith("background task failed")]
    assert [r.task for r in failures] == ["drainer", "drainer"]  # type: ignore[attr-defined]
    assert all(r.exc_info and "bug number" in str(r.exc_info[1]) for r in failures)


def test_cancelling_the_worker_stops_the_loop() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def scenario() -> None:
        task = asyncio.create_task(keep_running("forever", forever))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), 5))
