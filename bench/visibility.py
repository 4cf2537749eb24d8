"""Acknowledged → visible in results, from the processor's own histogram.

The processor observes ``vote_ack_to_count_seconds`` for (a sample of) every vote it
counts: from the gateway's ``received_at`` to the moment the new tally is in Redis,
where ``GET …/results`` and the SSE stream read it. The difference of the cumulative
buckets before and after the measured runs is the distribution for those runs' votes;
quantiles are reported as the bucket bound they fall under (``p99_le_s``).
"""

from __future__ import annotations

import httpx

from bench.scrape import samples

METRIC = "vote_ack_to_count_seconds"


def ack_to_count_buckets(metrics_url: str | None) -> dict[float, float]:
    """Cumulative bucket counts by upper bound (``inf`` included); {} when unreachable."""
    if not metrics_url:
        return {}
    try:
        found = samples(metrics_url, METRIC) or []
    except httpx.HTTPError:
        return {}
    return {float(s.labels["le"]): s.value for s in found if s.name == METRIC + "_bucket"}


def ack_to_visible(before: dict[float, float], after: dict[float, float]) -> dict[str, object]:
    if not after:
        return {}
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    count = cumulative[-1]
    if count <= 0:
        return {}

    def quantile(q: float) -> float:
        return next(b for b, c in zip(bounds, cumulative, strict=True) if c >= q * count)

    return {
        "count": int(count),
        "p50_le_s": quantile(0.5),
        "p90_le_s": quantile(0.9),
        "p99_le_s": quantile(0.99),
        "buckets": {str(b): int(c) for b, c in zip(bounds, cumulative, strict=True)},
    }
