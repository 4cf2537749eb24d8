"""The OpenAPI 3.1 description served at /openapi.json (built once, at import)."""

from __future__ import annotations

import msgspec

from gateway.models import BatchAnswer, BatchRequest, VoteAccepted, VoteRequest

_schemas, _components = msgspec.json.schema_components(
    [VoteRequest, VoteAccepted, BatchRequest, BatchAnswer],
    ref_template="#/components/schemas/{name}",
)

_problem = {
    "description": "RFC 9457 problem document",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_components["Problem"] = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "reason": {"type": "string"},
        "request_id": {"type": "string", "description": "also in the X-Request-Id header"},
    },
    "required": ["type", "title", "status"],
}
_components["VoteStatus"] = {
    "type": "object",
    "properties": {
        "vote_id": {"type": "string"},
        "status": {"enum": ["pending", "counted", "superseded", "rejected"]},
        "superseded_by": {"type": "string"},
        "reason": {"type": "string"},
    },
    "required": ["vote_id", "status"],
}
_components["Results"] = {
    "type": "object",
    "properties": {
        "election_id": {"type": "string"},
        "tallies": {"type": "object", "additionalProperties": {"type": "integer"}},
        "total": {"type": "integer"},
        "source": {"enum": ["redis", "postgres"]},
        "as_of": {"type": "number", "description": "unix seconds"},
    },
    "required": ["election_id", "tallies", "total", "source", "as_of"],
}
_components["Health"] = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "spilled": {"type": "integer"},
    },
    "required": ["status"],
}


def _json(description: str, schema: str) -> dict[str, object]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _problems(*codes: int) -> dict[str, object]:
    return {str(code): _problem for code in codes}


_election = {
    "name": "election_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_bearer = [{"bearer": []}]

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "Vote gateway", "version": "1"},
    "components": {
        "schemas": _components,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    },
    "paths": {
        "/v1/elections/{election_id}/votes": {
            "post": {
                "summary": "Cast a vote; 202 once it is durable (Kafka or the local spill)",
                "security": _bearer,
                "parameters": [_election],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schemas[0]}},
                },
                "responses": {
                    "202": {
                        "description": "Accepted and durable",
                        "content": {"application/json": {"schema": _schemas[1]}},
                    },
                    **_problems(400, 401, 403, 404, 408, 409, 413, 415, 422, 429, 503),
                },
            }
        },
        "/v1/elections/{election_id}/votes:batch": {
            "post": {
                "summary": "Cast up to VOTE_BATCH_MAX_VOTES votes, each with its own token",
                "description": (
                    "For edge aggregators and offline-first clients. Each vote is checked "
                    "and made durable on its own, as if sent alone to .../votes: its result "
                    "has code 202 (and the fields of VoteAccepted) only once it is durable, "
                    "else its HTTP error code and its problem document. Problems of the "
                    "request as a whole (election, content type, size, shape, too many "
                    "votes, window) answer the whole request and accept no vote. Retrying "
                    "a batch is safe: every vote is idempotent by its vote_id."
                ),
                "parameters": [_election],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schemas[2]}},
                },
                "responses": {
                    "200": {
                        "description": "One result per vote, in the order sent",
                        "content": {"application/json": {"schema": _schemas[3]}},
                    },
                    **{str(code): _problem for code in (400, 403, 404, 413, 415, 429, 503)},
                },
            }
        },
        "/v1/elections/{election_id}/votes/{vote_id}": {
            "get": {
                "summary": "Status of one of your votes: pending, counted, superseded, rejected."
                " Another voter's vote_id answers exactly as an unknown one (pending).",
                "security": _bearer,
                "parameters": [
                    _election,
                    {
                        "name": "vote_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    },
                ],
                "responses": {
                    "200": _json("Status", "VoteStatus"),
                    **_problems(401, 403, 404, 503),
                },
            }
        },
        "/v1/elections/{election_id}/results": {
            "get": {
                "summary": "Live tallies",
                "parameters": [_election],
                "responses": {"200": _json("Tallies", "Results"), **_problems(404, 503)},
            }
        },
        "/v1/elections/{election_id}/results/stream": {
            "get": {
                "summary": "Server-Sent Events, one per tally change",
                "parameters": [_election],
                "responses": {
                    "200": {
                        "description": "One event per change, heartbeats between",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_problems(404, 429, 503),
                },
            }
        },
        "/livez": {
            "get": {"summary": "Process is alive", "responses": {"200": _json("ok", "Health")}}
        },
        "/readyz": {
            "get": {
                "summary": "Kafka metadata, spill and election cache are good",
                "responses": {
                    "200": _json("ready", "Health"),
                    "503": _json("not ready", "Health"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
}

OPENAPI: bytes = msgspec.json.encode(SPEC)
