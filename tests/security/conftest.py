"""The security suite runs against the real stack: it uses the integration fixtures."""

from tests.integration.conftest import (  # noqa: F401
    create_election,
    event_key,
    kafka_bootstrap,
    pg_dsn,
    producer,
    redis_url,
    stack_env,
    start_service,
    unique_topic,
)
from tests.integration.gateway_fixtures import gateway_stack  # noqa: F401
from tests.integration.processor_harness import harness  # noqa: F401
from tests.security.edge import edge_stack  # noqa: F401
