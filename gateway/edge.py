"""What a client controls at the edge of a request: how it names its media type and its
credentials, how many requests it keeps open, and how slowly it sends its body.

Each check is written so an honest request pays next to nothing: the exact common form
is compared first, and the deadline on body reads is enforced by one sweep a fraction of
a second apart rather than by a timer per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from granian.rsgi import ProtocolClosed

from gateway import problems as p

__all__ = ["ClientGone", "InFlight", "ProtocolClosed", "bearer_token", "is_json"]


def is_json(content_type: str) -> bool:
    """``Content-Type`` names ``application/json`` (RFC 9110 §8.3.1: the type and subtype
    are case-insensitive, parameters such as ``charset`` may follow)."""
    if content_type == "application/json":
        return True
    return content_type.partition(";")[0].strip().lower() == "application/json"


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None; the scheme is
    case-insensitive and may be followed by several spaces (RFC 9110 §11.1, §11.4)."""
    if authorization.startswith("Bearer "):
        token = authorization[7:]
    else:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
    return token.lstrip(" ") or None


class ClientGone(Exception):
    """The client closed its connection before its request was read: no one to answer;
    counted as 499 (client closed request), a client error."""


class InFlight:
    """Vote requests in flight in one worker: bounded in all and per client, and each
    request's body read bounded in time.

    ``max_total`` protects the worker's memory and slots; ``max_per_client`` keeps one
    client (a slow one, say) from taking them all. ``body_timeout_s``: how long a body may
    take to arrive once the headers are in.
    """

    def __init__(self, max_total: int, max_per_client: int, body_timeout_s: float) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.body_timeout_s = body_timeout_s
        self.total = 0
        self.per_client: dict[str, int] = {}
        # Requests reading their body: task -> when it started (time.time()).
        self._reading: dict[Any, float] = {}
        self._overdue: set[Any] = set()

    def enter(self, client: str) -> None:
        """Count a request of ``client`` in, or refuse it: 429 past the client's share,
        503 past the worker's."""
        held = self.per_client.get(client, 0)
        if held >= self.max_per_client:
            raise p.RateLimited("too many requests in flight from this address", retry_after=1)
        if self.total >= self.max_total:
            raise p.Unavailable("too many requests in flight; retry", retry_after=1)
        self.per_client[client] = held + 1
        self.total += 1

    def leave(self, client: str) -> None:
        self.total -= 1
        held = self.per_client[client] - 1
        if held:
            self.per_client[client] = held
        else:
            del self.per_client[client]

    async def read(self, protocol: Any, now: float, chunked_limit: int | None = None) -> bytes:
        """The whole body, within the deadline (408 otherwise); ``ClientGone`` when the
        client disconnects first. ``chunked_limit``: the body has no Content-Length, so it
        is counted while read and refused past that many bytes (413)."""
        task = asyncio.current_task()
        self._reading[task] = now
        try:
            if chunked_limit is None:
                return await protocol()
            chunks: list[bytes] = []
            size = 0
            async for chunk in protocol:
                size += len(chunk)
                if size > chunked_limit:
                    raise p.PayloadTooLarge(f"body larger than {chunked_limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self._overdue:
                raise
            self._overdue.discard(task)
            task.uncancel()  # type: ignore[union-attr]
            raise p.RequestTimeout("the request body did not arrive in time") from None
        except ProtocolClosed:
            raise ClientGone() from None
        finally:
            del self._reading[task]

    def sweep(self, now: float) -> int:
        """Cancel every body read past its deadline; how many were cancelled."""
        cutoff = now - self.body_timeout_s
        late = [
            task
            for task, started in self._reading.items()
            if started < cutoff and task not in self._overdue
        ]
        for task in late:
            self._overdue.add(task)
            task.cancel()
        return len(late)

    async def sweep_forever(self) -> None:
        interval = min(1.0, self.body_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep(time.time())
