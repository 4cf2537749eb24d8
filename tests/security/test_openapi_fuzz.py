"""Issue 15 item 10: property-based fuzzing of the real gateway from its own OpenAPI
document (schemathesis): no server error and no answer the document does not list.

Bounded (a few examples per operation, derandomized) so it stays well under two
minutes; each request speaks for a fresh client (``client_headers``) so the per-client
rate limit is not what every answer ends up being. The operations are driven with
hypothesis directly (schemathesis's pytest plugin does not load under this pytest).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.gateway_fixtures import GatewayStack
from tests.security.edge import client_headers

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 12


def test_every_answer_is_documented_and_none_is_a_server_error(edge_stack: GatewayStack) -> None:
    schema = schemathesis.openapi.from_url(edge_stack.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert "POST /v1/elections/{election_id}/votes" in [op.label for op in operations]
    token = edge_stack.token("fuzz-voter")

    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: schemathesis.Case) -> None:
            headers = {"authorization": f"Bearer {token}", **client_headers()}
            if case.headers and "authorization" in {k.lower() for k in case.headers}:
                headers.pop("authorization")  # the case tries its own Authorization
            case.call_and_validate(
                base_url=edge_stack.base_url, headers=headers, checks=CHECKS, timeout=30
            )

        call()
