"""Several consumer-group members in one ``python -m processor`` process.

Each member is a full ``processor.consumer.Processor`` in its own thread: its own Kafka
consumer (so Kafka splits the partitions between them), PostgreSQL connection, Redis
client and dead-letter producer. Nothing else is shared but the module-level metrics,
whose only gauge is labelled by partition, and partitions are disjoint between members.
Members are safe against each other for the same reasons that several processes in
the group are: votes are keyed by voter, tallies are sharded by partition, offsets are
stored per partition under the fence of ``Store.apply_batch``, and a vote_id stored by
another partition meanwhile is a ``VoteIdRace`` that is retried.

Why threads help despite the GIL: a member spends most of its time waiting on
PostgreSQL (COPY, lookups, commit) or Kafka, and psycopg and librdkafka release the GIL
while they wait, so one member's database wait overlaps another's Python work.

Signals are handled here, in the main thread (Python delivers them only there):
SIGTERM / SIGINT ask every member to finish its batch and leave the group. If a member
dies of an exception the others are stopped the same way and the process exits 1, so
it never keeps running with part of its partitions unserved.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from processor import metrics
from processor.consumer import Processor
from processor.regions import RegionWatch
from processor.settings import ProcessorSettings

log = logging.getLogger("processor")

# How long the main thread sleeps at a time while it waits for a member to end.
_WATCH_S = 1.0


class Members:
    """N ``Processor``s, each run in its own thread, stopped together."""

    def __init__(
        self,
        settings: ProcessorSettings,
        factory: Callable[[ProcessorSettings, int], Processor] = Processor,
    ) -> None:
        self.processors: list[Processor] = []
        try:
            for i in range(settings.processor_members):
                self.processors.append(factory(settings, i))
        except BaseException:
            # Not run yet, so run() won't close them: leave no connection behind.
            for p in self.processors:
                p.close()
            raise
        self._ended = threading.Event()
        self._failed: list[int] = []
        self._threads = [
            threading.Thread(target=self._run_one, args=(p,), name=f"member-{p.member}")
            for p in self.processors
        ]

    def request_stop(self, *_: object) -> None:
        """Every member finishes its current batch, then leaves the group."""
        for p in self.processors:
            p.request_stop()

    def run(self) -> int:
        """Run all members until they are stopped; 0, or 1 if any of them failed."""
        for t in self._threads:
            t.start()
        # A member ends only when stopped or when it failed; either way the rest stop too.
        # Waited in slices: the signal handlers run in this thread, and so run promptly.
        while not self._ended.wait(_WATCH_S):
            pass
        self.request_stop()
        for t in self._threads:
            t.join()
        if self._failed:
            log.error("processor member failed", extra={"members": sorted(self._failed)})
            return 1
        return 0

    def _run_one(self, p: Processor) -> None:
        try:
            p.run()
        except BaseException:
            p.log.exception("member failed; stopping the others")
            self._failed.append(p.member)
        finally:
            self._ended.set()


def run(settings: ProcessorSettings) -> int:
    """``python -m processor``: serve the group with ``processor_members`` members."""
    metrics.serve(settings.processor_metrics_port)  # once, for all members
    members = Members(settings)
    # Installed before any member starts: from here on a signal stops them gracefully
    # (until now __main__'s handler exited at once, which was still clean).
    signal.signal(signal.SIGTERM, members.request_stop)
    signal.signal(signal.SIGINT, members.request_stop)
    watch = None
    if settings.processor_cluster:
        watch = RegionWatch(settings)
        watch.start()
    try:
        return members.run()
    finally:
        if watch is not None:
            watch.stop()
