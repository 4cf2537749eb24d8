"""Reading one metric family from a Prometheus endpoint (the gateway's, the processor's)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(metrics_url: str, family: str) -> list[Sample] | None:
    """The samples of ``family`` at ``metrics_url``; None when the family is not there.

    Raises ``httpx.HTTPError`` when the endpoint does not answer.
    """
    text = httpx.get(metrics_url, timeout=5).text
    for found in text_string_to_metric_families(text):
        if found.name == family:
            return found.samples
    return None
