"""The 3-node Kafka stack of the chaos suite (``bench.chaos.cluster``) as a session fixture.

It has its own directory and ports, so the tests that stop the checkout's single broker
and these never share a server. Started once per session (the first start formats three
brokers; later sessions restart the recorded cluster) and stopped at the end if the
session started it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.chaos.cluster import Cluster, running


@pytest.fixture(scope="session")
def three_node_cluster() -> Iterator[Cluster]:
    with running(Cluster()) as cluster:
        yield cluster
