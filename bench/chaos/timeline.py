"""What a scenario looked like second by second, and its PNG.

``Sampler`` reads the gateway's spill size and the processor's consumer lag (log end minus
the offsets stored in PostgreSQL) once a second in a thread of its own; the client's
votes give acks/s and latency. ``plot`` draws the four series one above the other, each
fault drawn as a shaded band.
"""

from __future__ import annotations

import contextlib
import math
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.client import OK, Vote


@dataclass(slots=True)
class Band:
    start_s: float
    end_s: float
    label: str


@dataclass
class Timeline:
    """Seconds since the load began on every series."""

    spill: list[tuple[float, float | None]] = field(default_factory=list)
    lag: list[tuple[float, int | None]] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)


class Sampler:
    """Samples spill size and consumer lag every ``interval_s`` until stopped."""

    def __init__(
        self,
        timeline: Timeline,
        clock: object,
        metrics_url: str,
        bootstrap: str,
        topic: str,
        dsn: str,
        group: str,
        cluster: str = "",
        interval_s: float = 1.0,
    ) -> None:
        self.timeline = timeline
        self.now = clock  # a callable: seconds since the load began
        self.metrics_url = metrics_url
        self.bootstrap = bootstrap
        self.topic = topic
        self.dsn = dsn
        self.group = group
        self.cluster = cluster
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import psycopg
        from confluent_kafka import Consumer, TopicPartition

        from bench.outage import spilled_events

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"chaos-sampler-{uuid.uuid4().hex}",
                "socket.timeout.ms": 2000,
                # A killed broker is the point of a scenario, not news: errors only.
                "log_level": 2,
            }
        )
        conn: psycopg.Connection | None = None
        partitions: list[int] = []
        try:
            while not self._stop.wait(self.interval_s):
                t = self.now()  # type: ignore[operator]
                spill: float | None = None
                with contextlib.suppress(Exception):
                    spill = spilled_events(self.metrics_url)
                self.timeline.spill.append((t, spill))
                lag: int | None = None
                try:
                    if not partitions:
                        md = consumer.list_topics(self.topic, timeout=2)
                        partitions = sorted(md.topics[self.topic].partitions)
                    ends = {
                        p: consumer.get_watermark_offsets(
                            TopicPartition(self.topic, p), timeout=1.0, cached=False
                        )[1]
                        for p in partitions
                    }
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                    stored = dict(
                        conn.execute(
                            "SELECT partition, next_offset FROM consumer_offsets"
                            " WHERE consumer_group = %s AND cluster = %s AND topic = %s",
                            (self.group, self.cluster, self.topic),
                        ).fetchall()
                    )
                    lag = sum(max(0, e - stored.get(p, 0)) for p, e in ends.items() if e > 0)
                except Exception:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                self.timeline.lag.append((t, lag))
        finally:
            consumer.close()
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()


def per_second(votes: list[Vote]) -> dict[str, list[tuple[float, float]]]:
    """Acks/s, p99 latency (ms) of the votes acknowledged in each second, and the
    attempts/s that got no 2xx (pure)."""
    acks: dict[int, list[float]] = defaultdict(list)
    refused: dict[int, int] = defaultdict(int)
    for v in votes:
        if v.outcome == OK and v.done_s is not None:
            acks[int(v.done_s)].append(v.done_s - v.scheduled_s)
        for a in v.attempts:
            if a.status is None or not 200 <= a.status < 300:
                refused[int(a.at_s)] += 1
    last = max([*acks, *refused], default=0)
    out: dict[str, list[tuple[float, float]]] = {"acks": [], "p99_ms": [], "not_ok": []}
    for s in range(last + 1):
        lat = sorted(acks.get(s, []))
        out["acks"].append((s, float(len(lat))))
        if lat:
            out["p99_ms"].append((s, 1000 * lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]))
        out["not_ok"].append((s, float(refused.get(s, 0))))
    return out


def plot(path: Path, title: str, votes: list[Vote], timeline: Timeline) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = per_second(votes)
    fig, axes = plt.subplots(4, 1, figsize=(11, 9), sharex=True)
    ax = axes[0]
    ax.plot(*zip(*series["acks"], strict=True), label="acks/s", color="tab:green")
    ax.plot(*zip(*series["not_ok"], strict=True), label="attempts/s without 2xx", color="tab:red")
    ax.set_ylabel("per second")
    ax.legend(loc="upper right", fontsize=8)
    if series["p99_ms"]:
        axes[1].plot(*zip(*series["p99_ms"], strict=True), color="tab:blue")
    axes[1].set_ylabel("p99 of votes\nacked that s (ms)")
    axes[1].set_yscale("symlog", linthresh=10)
    spill = [(t, v) for t, v in timeline.spill if v is not None]
    if spill:
        axes[2].plot(*zip(*spill, strict=True), color="tab:orange")
    axes[2].set_ylabel("spilled events")
    lag = [(t, v) for t, v in timeline.lag if v is not None]
    if lag:
        axes[3].plot(*zip(*lag, strict=True), color="tab:purple")
    axes[3].set_ylabel("consumer lag")
    axes[3].set_xlabel("seconds since the load began")
    for band in timeline.bands:
        for a in axes:
            a.axvspan(band.start_s, band.end_s, color="grey", alpha=0.2)
        axes[0].annotate(
            band.label,
            (band.start_s, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            va="top",
            rotation=90,
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
