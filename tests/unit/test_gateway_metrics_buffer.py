"""gateway.metrics' buffered wrappers: after ``flush`` a scrape shows exactly what the
same updates made straight through prometheus_client would show.

prometheus_client's own ``Histogram.observe`` / ``Counter.inc`` are the oracle; the
buffered histogram reaches into its private fields, so this also catches a library
upgrade that moves them.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway import metrics

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.1, 1.0)

# Values on, just below and just above every bound, besides arbitrary ones.
_edges = [v for b in BUCKETS for v in (b, math.nextafter(b, 0), math.nextafter(b, 2))]
amounts = st.one_of(st.sampled_from(_edges), st.floats(min_value=0, max_value=50, allow_nan=False))


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _histograms() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    plain_reg, buffered_reg = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("h", "h", ["d"], buckets=BUCKETS, registry=plain_reg)
    buffered = Histogram("h", "h", ["d"], buckets=BUCKETS, registry=buffered_reg)
    return plain_reg, plain, buffered_reg, buffered


@given(st.lists(st.lists(amounts, max_size=40), min_size=1, max_size=4))
def test_a_buffered_histogram_scrapes_like_observe(rounds: list[list[float]]) -> None:
    plain_reg, plain, buffered_reg, buffered = _histograms()
    direct = plain.labels("kafka")
    buffer = metrics.BufferedHistogram(buffered.labels("kafka"))
    for batch in rounds:  # several flushes, as the app makes once a second
        for amount in batch:
            direct.observe(amount)
            buffer.observe(amount)
        buffer.flush()
        want, got = _samples(plain_reg), _samples(buffered_reg)
        assert want.keys() == got.keys()
        for key, value in want.items():
            if key[0] == "h_sum":  # one addition per flush instead of one per value
                assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12)
            else:
                assert got[key] == value, key


def test_nothing_reaches_the_shared_values_before_flush() -> None:
    _, _, buffered_reg, buffered = _histograms()
    buffer = metrics.BufferedHistogram(buffered.labels("spill"))
    registry = CollectorRegistry()
    counter = metrics.BufferedCounter(Counter("c", "c", ["code"], registry=registry).labels("202"))
    for _ in range(3):
        buffer.observe(0.003)
        counter.inc()
    assert _samples(buffered_reg)[("h_count", (("d", "spill"),))] == 0
    assert _samples(registry)[("c_total", (("code", "202"),))] == 0
    metrics.flush()  # the module-level flush reaches every buffer
    assert _samples(buffered_reg)[("h_count", (("d", "spill"),))] == 3
    assert _samples(registry)[("c_total", (("code", "202"),))] == 3
    metrics.flush()  # and a second one adds nothing twice
    assert _samples(registry)[("c_total", (("code", "202"),))] == 3


def test_results_streams_share_one_buffered_counter() -> None:
    """Every buffered counter stays registered for ``flush``, so the app must keep one
    per status: one per SSE stream opened would grow without bound."""
    import asyncio

    from gateway.app import VoteGateway
    from gateway.config import GatewaySettings

    class Results:
        async def stream(self, _election_id: str):  # type: ignore[no-untyped-def]
            return
            yield

    class Transport:
        async def send_bytes(self, _frame: bytes) -> None:
            pass

    class Protocol:
        def response_stream(self, _status: int, _headers: list) -> Transport:
            return Transport()

        async def client_disconnect(self) -> None:
            await asyncio.sleep(0)

    gateway = VoteGateway(GatewaySettings())
    gateway.results = Results()

    async def no_lookup(_election_id: str) -> None:
        return None

    gateway._election = no_lookup  # type: ignore[method-assign]

    class Scope:
        client = "127.0.0.1:5000"
        headers: dict[str, str] = {}

    async def open_streams() -> None:
        for _ in range(5):
            await gateway.stream_results(Scope(), Protocol(), "e1")

    before = len(metrics._BUFFERS)
    asyncio.run(open_streams())
    assert len(metrics._BUFFERS) - before <= 1


GC_IN_A_METRIC_WRITE = """
import gc, sys
from prometheus_client import mmap_dict
from gateway import metrics

metrics.observe_gc_pauses()
write_value = mmap_dict.MmapedDict.write_value

def write_value_then_collect(self, *args, **kwargs):
    # A collection triggered by an allocation while prometheus_client holds its lock.
    write_value(self, *args, **kwargs)
    gc.collect()

mmap_dict.MmapedDict.write_value = write_value_then_collect
metrics.spill_events.set(1)
metrics.flush()
print("done")
"""


def test_a_collection_during_a_metric_write_does_not_deadlock_the_worker(tmp_path) -> None:
    """In multiprocess mode every prometheus_client value shares one non-reentrant lock;
    a GC pause observed from the gc callback while the same thread holds it (a
    collection triggered inside ``Gauge.set``) hung the worker's event loop for good."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", GC_IN_A_METRIC_WRITE],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker deadlocked in its gc callback") from None
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr
