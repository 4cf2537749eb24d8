"""Reading metrics from a Prometheus endpoint (the gateway's, the processor's)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(metrics_url: str, family: str) -> list[Sample] | None:
    """The samples of ``family`` at ``metrics_url``; None when the family is not there.

    Raises ``httpx.HTTPError`` when the endpoint does not answer.
    """
    # verify=False: the endpoints are plain HTTP, and loading the CA bundle for a client
    # that never uses it takes long enough under the GIL to stall a load generator's
    # event loop in the same process (bench/README.md, "Region loss").
    text = httpx.get(metrics_url, timeout=5, verify=False).text
    for found in text_string_to_metric_families(text):
        if found.name == family:
            return found.samples
    return None


def named(metrics_url: str, name: str) -> list[Sample]:
    """Every sample called ``name`` (``vote_requests_total``, ``…_bucket``) at the URL."""
    text = httpx.get(metrics_url, timeout=10).text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def total(metrics_url: str, name: str) -> float:
    """The sum of the samples called ``name`` over their label sets."""
    return sum(sample.value for sample in named(metrics_url, name))


def by_label(metrics_url: str, name: str, label: str) -> dict[str, float]:
    """The samples called ``name`` by the value of their ``label``."""
    return {sample.labels[label]: sample.value for sample in named(metrics_url, name)}
