"""bench.scrape: reading a metric family from a plain-HTTP Prometheus endpoint."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from bench.scrape import samples
from tests.unit.local_http import QuietHandler, serving

METRICS = b"""# TYPE vote_spill_events gauge
vote_spill_events{slot="0"} 3.0
vote_spill_events{slot="1"} 2.0
"""


@pytest.fixture
def metrics_url() -> Iterator[str]:
    class Metrics(QuietHandler):
        def do_GET(self) -> None:
            self.reply(200, METRICS)

    with serving(Metrics) as url:
        yield f"{url}/metrics"


def test_reads_a_family(metrics_url: str) -> None:
    found = samples(metrics_url, "vote_spill_events")
    assert found is not None and sum(s.value for s in found) == 5.0
    assert samples(metrics_url, "vote_no_such_family") is None


def test_a_plain_http_scrape_loads_no_ca_bundle(
    metrics_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Loading the CA bundle takes seconds under the GIL on a loaded machine, and a
    # sampler scraping once a second stalled the load generator beside it.
    def no_ca_bundle(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CA bundle was loaded for a plain-HTTP scrape")

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", no_ca_bundle)
    found = samples(metrics_url, "vote_spill_events")
    assert found is not None
