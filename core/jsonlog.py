"""Structured JSON log lines on stderr, one object per line, for every service.

Every line has ``ts`` (UTC, ISO 8601 with milliseconds: ``2026-12-02T07:40:00.123Z``),
``level``, ``service``, ``logger`` and ``msg``; the fields a call passes with
``extra={...}`` become top-level keys (lists and dicts stay JSON, anything else JSON
cannot hold becomes its ``str``), and ``exc`` holds a traceback.
"""

from __future__ import annotations

import calendar
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import msgspec

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_encoder = msgspec.json.Encoder(enc_hook=str)
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_ts(created: float) -> str:
    """``created`` (unix seconds) as a log line's ``ts``."""
    return time.strftime(_TS_FORMAT, time.gmtime(created)) + f".{int(created * 1000) % 1000:03d}Z"


def parse_ts(ts: str) -> float:
    """A log line's ``ts`` back to unix seconds (to the millisecond)."""
    whole, _, millis = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, _TS_FORMAT)) + int(millis or 0) / 1000


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": format_ts(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        try:
            return _encoder.encode(doc).decode()
        except (TypeError, ValueError, msgspec.EncodeError):
            # A field msgspec cannot encode (a dict with tuple keys, say): the line still goes out.
            return json.dumps(doc, default=str)


class FieldsAdapter(logging.LoggerAdapter):
    """Adds fixed fields (``{"member": 2}``) to every record, next to the call's own
    ``extra`` (the standard adapter would replace those on Python < 3.13)."""

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def setup(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
