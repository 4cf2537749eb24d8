"""Every HTTP error is a type here and leaves as an RFC 9457 problem document."""

from __future__ import annotations

import msgspec


class Problem(Exception):
    """An error the client sees: status, a stable type slug, a human title and detail."""

    status: int = 500
    slug: str = "internal"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str = "",
        *,
        retry_after: float | None = None,
        internal: str = "",
        **extra: object,
    ):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after
        # For the log only: error text of RocksDB, the OS or a database tells a client
        # about the machine, never anything it can act on.
        self.internal = internal
        self.extra = extra

    def headers(self) -> list[tuple[str, str]]:
        headers = [("content-type", "application/problem+json")]
        if self.retry_after is not None:
            headers.append(("retry-after", str(max(1, int(self.retry_after + 0.999)))))
        if self.status == 401:
            headers.append(("www-authenticate", 'Bearer realm="votes"'))
        return headers

    def body(self, instance: str = "", request_id: str = "") -> bytes:
        doc: dict[str, object] = {
            "type": f"https://vote.example/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if request_id:
            doc["request_id"] = request_id
        doc.update(self.extra)
        return msgspec.json.encode(doc)


class BadRequest(Problem):
    status, slug, title = 400, "malformed", "Malformed request"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Missing, invalid or expired token"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Not allowed to vote here"


class ElectionNotOpen(Problem):
    status, slug, title = 403, "election-not-open", "The election is not open"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(Problem):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, method: str, *, allow: str) -> None:
        super().__init__(f"{method} is not allowed here; {allow} is")
        self.allow = allow

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("allow", self.allow)]


class RequestTimeout(Problem):
    status, slug, title = 408, "request-timeout", "The request did not arrive in time"

    def headers(self) -> list[tuple[str, str]]:
        # The rest of the body may still come: the connection cannot carry another request.
        return [*super().headers(), ("connection", "close")]


class Conflict(Problem):
    status, slug, title = 409, "vote-id-conflict", "vote_id already used with other content"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "too-large", "Request body too large"


class UnsupportedMediaType(Problem):
    status, slug, title = 415, "unsupported-media-type", "Content-Type must be application/json"


class UnknownCandidate(Problem):
    status, slug, title = 422, "unknown-candidate", "Unknown candidate"


class RateLimited(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


class Unavailable(Problem):
    status, slug, title = 503, "unavailable", "The vote could not be made durable; retry"
