"""``granian-floor``: the cheapest RSGI app granian can serve the vote request to.

It reads the body, as the gateway does, and answers 202 with a short JSON body, under
the same server settings as the gateway (granian, RSGI, uvloop, one process per
worker). No token, no Kafka, no state: the ratio gateway / granian-floor is how much of
the framework's ceiling on this machine the gateway's own work leaves.
"""

from __future__ import annotations

from typing import Any

_HEADERS = [("content-type", "application/json")]


class Floor:
    async def __call__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if scope.path == "/readyz":
            protocol.response_bytes(200, _HEADERS, b'{"status":"ready"}')
            return
        await protocol()
        protocol.response_bytes(202, _HEADERS, b'{"status":"accepted"}')


app = Floor()
