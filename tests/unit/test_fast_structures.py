"""gateway._fast dedup cache, rate limiter, event encoding and receipts, on both implementations.

``_TestStructures`` holds the cases; its subclasses bind them to the compiled core and to
the pure-Python reference (the uvloop pattern). The hypothesis tests below run the same
random operation sequences on both and require the same answers at every step.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from types import ModuleType
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway._fast as fast
from core import event, keyset
from gateway._fast import reference

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RECEIPT_KEY = b"gateway-receipt-key-0123456789ab"
EVENT_KEY = keyset.Key("ev-7", b"event-key-0123456789abcdef-0123456", keyset.ACTIVE)


def expected_receipt(
    key: bytes, vote_id: str, election_id: str, voter_id: str, choice: str, received_at_us: int
) -> str:
    """The receipt format written out independently of both implementations."""
    message = f"{election_id}\x1f{vote_id}\x1f{voter_id}\x1f{choice}\x1f{received_at_us}"
    mac = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return "r1." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


class _TestStructures:
    m: ClassVar[ModuleType]

    # -- IdempotencyCache ------------------------------------------------------------------

    def test_cache_returns_the_first_answer(self) -> None:
        cache = self.m.IdempotencyCache(4)
        assert cache.get("v1") is None and len(cache) == 0
        cache.put("v1", b"d1", {"status": "accepted"})
        cache.put("v1", b"d2", "ignored")  # the first answer stays
        assert cache.get("v1") == (b"d1", {"status": "accepted"})
        assert len(cache) == 1 and cache.capacity == 4

    def test_cache_evicts_least_recently_used(self) -> None:
        cache = self.m.IdempotencyCache(3)
        for vote_id in "abc":
            cache.put(vote_id, b"d", vote_id)
        assert cache.get("a") == (b"d", "a")  # a is now the most recent
        cache.put("d", b"d", "d")
        assert cache.get("b") is None
        assert [cache.get(v) is not None for v in "acd"] == [True, True, True]
        cache.put("e", b"d", "e")  # a was used least recently since the last get order
        assert cache.get("a") is None and len(cache) == 3

    def test_put_of_a_known_id_does_not_refresh_it(self) -> None:
        cache = self.m.IdempotencyCache(2)
        cache.put("a", b"d", 1)
        cache.put("b", b"d", 2)
        cache.put("a", b"x", 3)
        cache.put("c", b"d", 4)
        assert cache.get("a") is None and cache.get("b") == (b"d", 2)

    def test_cache_discard(self) -> None:
        cache = self.m.IdempotencyCache(2)
        cache.put("a", b"d", 1)
        cache.put("b", b"d", 2)
        cache.discard("a")
        cache.discard("missing")
        assert len(cache) == 1 and cache.get("a") is None
        cache.put("c", b"d", 3)
        cache.put("a", b"d", 5)
        assert cache.get("b") is None and cache.get("a") == (b"d", 5)
        for vote_id in ("a", "c"):
            cache.discard(vote_id)
        assert len(cache) == 0
        cache.put("z", b"d", 0)
        assert cache.get("z") == (b"d", 0)

    def test_cache_of_one(self) -> None:
        cache = self.m.IdempotencyCache(1)
        cache.put("a", b"d", 1)
        cache.put("b", b"d", 2)
        assert cache.get("a") is None and cache.get("b") == (b"d", 2) and len(cache) == 1

    @pytest.mark.parametrize("capacity", [0, -1])
    def test_cache_refuses_a_useless_capacity(self, capacity: int) -> None:
        with pytest.raises(ValueError):
            self.m.IdempotencyCache(capacity)

    def test_cache_is_bounded(self) -> None:
        cache = self.m.IdempotencyCache(100)
        for i in range(10_000):
            cache.put(f"vote-{i}", b"d", i)
        assert len(cache) == 100 and cache.get("vote-9999") == (b"d", 9999)
        assert cache.get("vote-9899") is None

    # -- RateLimiter -----------------------------------------------------------------------

    def test_burst_then_retry_after(self) -> None:
        limiter = self.m.RateLimiter(rate=2.0, burst=3, capacity=10)
        assert [limiter.acquire("ip", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
        assert limiter.acquire("ip", 100.0) == pytest.approx(0.5)
        assert limiter.acquire("ip", 100.25) == pytest.approx(0.25)
        assert limiter.acquire("ip", 100.5) == 0.0
        assert limiter.acquire("other", 100.5) == 0.0
        assert (limiter.rate, limiter.burst, limiter.capacity) == (2.0, 3.0, 10)

    def test_refill_is_capped_at_burst(self) -> None:
        limiter = self.m.RateLimiter(rate=1.0, burst=2, capacity=10)
        limiter.acquire("k", 0.0)
        assert [limiter.acquire("k", 1000.0) for _ in range(3)] == [0.0, 0.0, 1.0]

    def test_clock_going_backwards_does_not_refill(self) -> None:
        limiter = self.m.RateLimiter(rate=1.0, burst=1, capacity=10)
        assert limiter.acquire("k", 50.0) == 0.0
        assert limiter.acquire("k", 10.0) == 1.0
        assert limiter.acquire("k", 50.5) == pytest.approx(0.5)

    def test_dropped_key_starts_with_a_full_bucket(self) -> None:
        limiter = self.m.RateLimiter(rate=0.001, burst=1, capacity=2)
        assert limiter.acquire("a", 0.0) == 0.0
        assert limiter.acquire("a", 0.0) > 0
        limiter.acquire("b", 0.0)
        limiter.acquire("a", 0.0)  # a is the most recent again
        limiter.acquire("c", 0.0)  # drops b
        assert len(limiter) == 2
        assert limiter.acquire("a", 0.0) > 0  # a is the most recent again
        assert limiter.acquire("b", 0.0) == 0.0  # b was dropped: a full bucket; drops c
        limiter.acquire("d", 0.0)  # drops a
        assert limiter.acquire("a", 0.0) == 0.0

    @pytest.mark.parametrize(
        ("rate", "burst", "capacity"), [(0, 1, 1), (-1, 1, 1), (1, 0.5, 1), (1, 1, 0)]
    )
    def test_limiter_refuses_bad_parameters(self, rate: float, burst: float, capacity: int) -> None:
        with pytest.raises(ValueError):
            self.m.RateLimiter(rate, burst, capacity)

    # -- encode_event ----------------------------------------------------------------------

    def signer(self, key: keyset.Key = EVENT_KEY) -> Any:
        return self.m.EventSigner(key.kid, key.secret)

    @pytest.mark.parametrize(
        "received_at_us",
        [
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            2**32 - 1,
            2**32,
            1_732_490_000_123_456,
            event.MAX_RECEIVED_AT_US,
        ],
    )
    def test_event_matches_core_event_seal(self, received_at_us: int) -> None:
        fields = ("01J9Z8", "election-1", "voter-7", "alice", received_at_us, "gw-a")
        payload = self.m.encode_event(*fields, self.signer())
        assert payload == event.seal(event.VoteEvent(1, *fields), EVENT_KEY)
        mac = hmac.new(EVENT_KEY.secret, payload[:-32], hashlib.sha256).digest()
        assert event.decode(payload) == event.VoteEvent(2, *fields, kid="ev-7", mac=mac)
        assert msgpack.unpackb(payload)["received_at_us"] == received_at_us
        assert (
            event.authentication_problem(
                payload, event.decode(payload), keyset.KeySet((EVENT_KEY,))
            )
            is None
        )

    def test_event_mac_changes_with_the_key_and_the_kid(self) -> None:
        fields = ("01J9Z8", "election-1", "voter-7", "alice", 5, "gw-a")
        other_secret = keyset.Key("ev-7", b"another-event-key-0123456789abcdef", keyset.ACTIVE)
        other_kid = keyset.Key("ev-8", EVENT_KEY.secret, keyset.ACTIVE)
        payloads = {
            self.m.encode_event(*fields, self.signer(k))
            for k in (EVENT_KEY, other_secret, other_kid)
        }
        assert len({p[-32:] for p in payloads}) == 3

    @pytest.mark.parametrize(
        ("kid", "secret"), [("", b"k" * 32), ("a.b", b"k" * 32), ("ev-1", b"k" * 31)]
    )
    def test_event_signer_refuses_unusable_keys(self, kid: str, secret: bytes) -> None:
        with pytest.raises(ValueError):
            self.m.EventSigner(kid, secret)

    @pytest.mark.parametrize("length", [1, 31, 32, 255, 256])
    def test_event_string_length_boundaries(self, length: int) -> None:
        """Up to MAX_FIELD_BYTES UTF-8 bytes, in 1- to 4-byte characters."""
        text = "x" * (length - 2) + "\u00e9" if length >= 2 else "x"
        fields = (text, "e\u00e9", "v" * length, "\U0001f600" * max(1, length // 4), 5, text)
        assert self.m.encode_event(*fields, self.signer()) == event.seal(
            event.VoteEvent(1, *fields), EVENT_KEY
        )

    @pytest.mark.parametrize(
        ("position", "value", "problem"),
        [
            (0, "", "vote_id is empty"),
            (1, "e" * 257, "election_id is longer than 256 bytes in UTF-8"),
            # 320 characters of ASCII, and 129 two-byte characters (258 bytes, 129 chars)
            (2, "v" * 320, "voter_id is longer than 256 bytes in UTF-8"),
            (2, "\u00e9" * 129, "voter_id is longer than 256 bytes in UTF-8"),
            (3, "a\x00", "choice contains a control character"),
            (3, "a\x7f", "choice contains a control character"),
            (3, "a\u0085", "choice contains a control character"),
            (0, "v\ud800", "vote_id is not valid Unicode (a lone surrogate)"),
            (4, 0, "received_at_us is not between the epoch and the year 10000"),
            (4, -1, "received_at_us is not between the epoch and the year 10000"),
            (4, 2**63, "received_at_us is not between the epoch and the year 10000"),
            (4, 2**64, "received_at_us is not between the epoch and the year 10000"),
            (
                4,
                event.MAX_RECEIVED_AT_US + 1,
                "received_at_us is not between the epoch and the year 10000",
            ),
            (5, "gw\n", "gateway_id contains a control character"),
        ],
    )
    def test_event_refuses_what_the_processor_would(
        self, position: int, value: Any, problem: str
    ) -> None:
        fields: list[Any] = ["v", "e", "voter", "c", 1, "gw"]
        fields[position] = value
        with pytest.raises(ValueError) as refused:
            self.m.encode_event(*fields, self.signer())
        assert str(refused.value) == problem

    # -- sign_receipt ----------------------------------------------------------------------

    def test_receipt_is_hmac_sha256_over_the_vote_identity(self) -> None:
        args = ("01J9Z8", "election-1", "voter-7", "alice", 1_732_490_000_123_456)
        receipt = self.m.sign_receipt(RECEIPT_KEY, *args)
        assert receipt == expected_receipt(RECEIPT_KEY, *args)
        assert receipt.startswith("r1.") and len(receipt) == 46

    def test_receipt_changes_with_every_field_and_key(self) -> None:
        base = ["v", "e", "voter", "alice", 1]
        seen = {self.m.sign_receipt(RECEIPT_KEY, *base)}
        for i, other in enumerate(["w", "f", "voter2", "bob", 2]):
            changed = list(base)
            changed[i] = other
            seen.add(self.m.sign_receipt(RECEIPT_KEY, *changed))
        seen.add(self.m.sign_receipt(b"another key", *base))
        seen.add(self.m.sign_receipt(RECEIPT_KEY, "v", "e", "vote", "ralice", 1))
        assert len(seen) == 8

    def test_receipt_keys_alternate_and_are_any_length(self) -> None:
        for key in (RECEIPT_KEY, b"", b"k" * 200, RECEIPT_KEY, bytearray(b"k" * 200)):
            args = ("v\u00e9", "e", "voter", "c" * 600, -3)
            assert self.m.sign_receipt(key, *args) == expected_receipt(bytes(key), *args)


class TestCompiledStructures(_TestStructures):
    m = fast


class TestReferenceStructures(_TestStructures):
    m = reference


# -- the two implementations agree -------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
CACHE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("put"), KEYS, st.binary(max_size=2), st.integers(0, 9)),
        st.tuples(st.just("discard"), KEYS),
    ),
    max_size=60,
)


@PROPERTY
@given(capacity=st.integers(1, 5), ops=CACHE_OPS)
def test_cache_models_agree(capacity: int, ops: list[tuple[Any, ...]]) -> None:
    caches = [fast.IdempotencyCache(capacity), reference.IdempotencyCache(capacity)]
    for op, *args in ops:
        results = [getattr(cache, op)(*args) for cache in caches]
        assert results[0] == results[1], (op, args)
        assert len(caches[0]) == len(caches[1]) <= capacity
    for key in "abcdef":  # same survivors in the same order of recency
        assert caches[0].get(key) == caches[1].get(key)


@PROPERTY
@given(
    rate=st.floats(0.01, 100.0) | st.sampled_from([0.1, 1.0, 3.0]),
    burst=st.floats(1.0, 10.0) | st.integers(1, 5),
    capacity=st.integers(1, 5),
    ops=st.lists(
        st.tuples(KEYS, st.floats(-2.0, 5.0) | st.sampled_from([0.0, 0.1, 1.0])), max_size=80
    ),
)
def test_rate_limiter_models_agree(
    rate: float, burst: float, capacity: int, ops: list[tuple[str, float]]
) -> None:
    limiters = [
        fast.RateLimiter(rate, burst, capacity),
        reference.RateLimiter(rate, burst, capacity),
    ]
    now = 1_700_000_000.0
    for key, step in ops:
        now += step
        compiled, oracle = (limiter.acquire(key, now) for limiter in limiters)
        assert abs(compiled - oracle) <= 1e-9, (key, now, compiled, oracle)
        assert len(limiters[0]) == len(limiters[1]) <= capacity


# Small alphabet (1- to 4-byte UTF-8) plus runs around the fixstr/str8/str16 boundaries:
# cheap to generate (str32 is covered by test_event_string_length_boundaries).
CHARS = st.sampled_from("ab-_\x00\x1f\x7f\x85\x9f\xa0\u00e9\u0800\U0001f600")
VALID_FIELD = st.text(CHARS, max_size=12) | st.builds(
    lambda char, n: char * n,
    st.sampled_from(["x", "\u00e9"]),
    st.sampled_from([15, 16, 31, 32, 85, 86, 127, 128, 129, 255, 256, 257]) | st.integers(0, 300),
)
FIELD = VALID_FIELD | st.sampled_from(["\ud800", "x\udfff"])  # lone surrogates: no UTF-8
MICROS = (
    st.integers(1, event.MAX_RECEIVED_AT_US)
    | st.integers(0, 2**64 - 1)
    | st.sampled_from(
        [0, 127, 128, 255, 256, 2**16, 2**32, 2**64 - 1, event.MAX_RECEIVED_AT_US + 1]
    )
)
ANY_INT = MICROS | st.integers(-(2**70), 2**70) | st.sampled_from([-1, 2**64])


@PROPERTY
@given(fields=st.tuples(FIELD, FIELD, FIELD, FIELD), received_at_us=ANY_INT, gateway_id=FIELD)
def test_encode_event_agrees_with_reference_and_msgspec(
    fields: tuple[str, str, str, str], received_at_us: int, gateway_id: str
) -> None:
    """Both encoders refuse exactly what core.event refuses, in the same words, and
    produce the same bytes for the rest."""
    candidate = event.VoteEvent(1, *fields, received_at_us, gateway_id)
    compiled = fast.EventSigner(EVENT_KEY.kid, EVENT_KEY.secret)
    oracle = reference.EventSigner(EVENT_KEY.kid, EVENT_KEY.secret)
    try:
        expected = reference.encode_event(*fields, received_at_us, gateway_id, oracle)
    except ValueError as exc:
        assert str(exc) == event.event_problem(candidate)
        with pytest.raises(ValueError) as refused:
            fast.encode_event(*fields, received_at_us, gateway_id, compiled)
        assert str(refused.value) == str(exc)
        return
    assert event.event_problem(candidate) is None
    assert fast.encode_event(*fields, received_at_us, gateway_id, compiled) == expected
    assert expected == event.seal(candidate, EVENT_KEY)


@PROPERTY
@given(
    key=st.binary(max_size=70),
    fields=st.tuples(VALID_FIELD, VALID_FIELD, VALID_FIELD, VALID_FIELD),
    received_at_us=ANY_INT,
)
def test_sign_receipt_agrees(
    key: bytes, fields: tuple[str, str, str, str], received_at_us: int
) -> None:
    receipt = fast.sign_receipt(key, *fields, received_at_us)
    assert receipt == reference.sign_receipt(key, *fields, received_at_us)
    assert receipt == expected_receipt(key, *fields, received_at_us)


def test_compiled_caches_add_no_objects_for_the_cyclic_collector() -> None:
    """A million cached votes must not be walked by every full collection: that would
    stall every request in flight. Only the compiled maps promise this."""
    import gc

    cache = fast.IdempotencyCache(100_000)
    limiter = fast.RateLimiter(1.0, 2.0, 100_000)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        cache.put(f"vote-{i}", b"digest", b"answer")
        limiter.acquire(f"voter-{i}", 0.0)
    gc.collect()  # untracks the (digest, answer) tuples: they hold only bytes
    assert len(gc.get_objects()) - before < 1_000
