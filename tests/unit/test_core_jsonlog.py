"""core.jsonlog: the one log line format of the gateway and the processor."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from core import jsonlog
from core.jsonlog import FieldsAdapter, JsonFormatter

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def emit(service: str, call, level: int = logging.INFO) -> dict:
    """The JSON object one logging call through ``JsonFormatter(service)`` writes."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter(service))
    logger = logging.getLogger(f"test.jsonlog.{service}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(level)
    call(logger)
    [line] = out.getvalue().splitlines()
    return json.loads(line)


def test_a_line_has_the_common_fields_and_the_calls_extra_fields() -> None:
    doc = emit("processor", lambda log: log.info("hello %s", "you", extra={"partition": 4}))
    assert TS.fullmatch(doc.pop("ts")), doc
    assert doc == {
        "level": "info",
        "service": "processor",
        "logger": "test.jsonlog.processor",
        "msg": "hello you",
        "partition": 4,
    }


def test_lists_and_dicts_stay_json_and_other_values_become_text() -> None:
    """The processor's "partitions assigned" line is read back by its tests and bench."""
    doc = emit(
        "processor",
        lambda log: log.info(
            "partitions assigned",
            extra={"partitions": [0, 3], "offsets": {0: 12}, "error": OSError("gone")},
        ),
    )
    assert doc["partitions"] == [0, 3]
    assert doc["offsets"] == {"0": 12}
    assert doc["error"] == "gone"
    # Keys msgspec cannot write still give a line.
    doc = emit("gateway", lambda log: log.info("odd", extra={"odd": {(1, 2): "x"}}))
    assert doc["msg"] == "odd" and "(1, 2)" in doc["odd"]


def test_a_traceback_goes_into_exc() -> None:
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    doc = emit("gateway", fail)
    assert doc["level"] == "error" and "ValueError: boom" in doc["exc"]


@pytest.mark.parametrize("created", [0.0, 1764660000.123, 1764660000.999, 4102444799.5])
def test_ts_reads_back_to_the_millisecond(created: float) -> None:
    ts = jsonlog.format_ts(created)
    assert TS.fullmatch(ts)
    assert jsonlog.parse_ts(ts) == pytest.approx(created, abs=0.001)


def test_ts_is_utc() -> None:
    assert jsonlog.format_ts(0.25) == "1970-01-01T00:00:00.250Z"


def test_member_field_is_added_to_the_calls_own_fields() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("test.members")
    logger.addHandler(handler)
    try:
        FieldsAdapter(logger, {"member": 1}).warning("x", extra={"partition": 4})
    finally:
        logger.removeHandler(handler)
    assert (records[0].member, records[0].partition) == (1, 4)  # type: ignore[attr-defined]
