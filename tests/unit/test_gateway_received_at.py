"""gateway.acceptance.received_at_text, the ``received_at`` of every 202: the same text
as datetime's isoformat with ``Z`` (the oracle), whichever second it was last called for."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from gateway.acceptance import received_at_text

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _reference(us: int) -> str:
    return (EPOCH + dt.timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


MICROS = st.integers(min_value=0, max_value=253402300799_999999)  # up to 9999-12-31


@given(st.lists(MICROS, min_size=1, max_size=20))
def test_matches_isoformat_in_any_order_of_calls(values: list[int]) -> None:
    for us in values:
        assert received_at_text(us) == _reference(us)


@given(MICROS)
def test_the_same_second_twice_and_a_whole_second(us: int) -> None:
    second = us - us % 1_000_000
    assert received_at_text(second + 1) == _reference(second + 1)
    assert received_at_text(second) == _reference(second)  # no fraction, as isoformat writes it
    assert received_at_text(us) == _reference(us)
