"""``python -m bench fastpath``: micro-benchmarks of gateway._fast against its peers.

For each case: a warm-up, a calibrated loop count (each timed run lasts about
``--target`` seconds), then ``--repeat`` timed runs. The cases are run round-robin
(one run of every case per round) so that a burst of load on a shared machine hits all
of them alike; the figure reported is the median ns per operation over the rounds.
Timed statements are compiled by ``timeit`` (no lambda in the loop).

Peers: ``reference`` is gateway/_fast/reference.py (the pure-Python oracle), ``pyjwt`` is
``jwt.decode``, ``cryptography`` is the bare ``Ed25519PublicKey.verify`` of the very
signature and signing input the token carries, ``msgspec`` is ``core.event.encode``.

    python -m bench fastpath --json bench/out/fastpath.json [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import probe

PROG = "python -m bench fastpath"
NOW = time.time()
AUDIENCE = "election-2026"
LEEWAY = 30.0


@dataclass
class Case:
    name: str
    stmt: str
    namespace: dict[str, Any]
    loops: int = 0
    samples: list[float] = field(default_factory=list)

    def timer(self) -> timeit.Timer:
        return timeit.Timer(self.stmt, globals=self.namespace)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="FILE", type=Path, help="also write the results as JSON to FILE"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="5 rounds of ~20 ms per case (a smoke run, noisier figures)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed rounds per case (default 9, or 5 with --quick; min 5)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="seconds per timed run (default 0.2, or 0.02 with --quick)",
    )
    parser.add_argument(
        "--only",
        metavar="SUBSTRING",
        default=None,
        help="run only the cases whose name contains SUBSTRING",
    )


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def build_cases() -> list[Case]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    import gateway._fast as fast
    from core import event, keyset
    from gateway._fast import reference

    secret = hashlib.sha256(b"bench hs256 secret").digest()
    signer = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench ed25519").digest())
    public = signer.public_key()
    jwks = {
        "keys": [
            {"kid": "hs-2026-1", "kty": "oct", "k": _b64(secret)},
            {
                "kid": "ed-2026-1",
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64(public.public_bytes(Encoding.Raw, PublicFormat.Raw)),
            },
        ]
    }
    # A token as the identity service would issue it: every claim the gateway checks.
    claims = {
        "iss": "vote-identity",
        "sub": "voter-0012345678",
        "aud": AUDIENCE,
        "exp": int(NOW) + 3600,
        "nbf": int(NOW) - 60,
        "iat": int(NOW) - 60,
        "jti": "3f1c2a9e-5b7d-4e8f-9a0b-1c2d3e4f5a6b",
    }
    hs_token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "hs-2026-1"})
    ed_token = jwt.encode(claims, signer, algorithm="EdDSA", headers={"kid": "ed-2026-1"})
    signing_input, _, ed_sig = ed_token.rpartition(".")
    fast_keys, ref_keys = fast.KeyRing(jwks), reference.KeyRing(jwks)
    # What the gateway checks: audience, clock, leeway, issuer and maximum lifetime.
    checks = (AUDIENCE, NOW, LEEWAY, "vote-identity", 86400.0)
    expected = (claims["sub"], claims["jti"], claims["exp"])
    for module, keys in ((fast, fast_keys), (reference, ref_keys)):
        for token in (hs_token, ed_token):
            assert module.verify_token(token, keys, *checks) == expected

    common = {
        "checks": checks,
        "aud": AUDIENCE,
        "iss": "vote-identity",
        "hs": hs_token,
        "ed": ed_token,
    }
    vote = (
        "01JD3X9V6ZKQ8M4T2W7Y5R1N0P",
        AUDIENCE,
        "voter-0012345678",
        "candidate-07",
        1_764_000_000_123_456,
        "gateway-a-3",
    )
    receipt_key = hashlib.sha256(b"bench receipt key").digest()
    event_key = keyset.Key("ev-2026-1", hashlib.sha256(b"bench event key").digest(), "active")
    # 10k-entry maps: big enough to be realistic per worker, small enough that the figure
    # measures the code rather than the machine's cache misses on a shared host.
    vote_ids = [f"01JD3X9V6ZKQ8M4T2W{i:08d}" for i in range(20_000)]

    def cache_case(module: Any, name: str) -> Case:
        cache = module.IdempotencyCache(10_000)
        for vote_id in vote_ids[10_000:]:
            cache.put(vote_id, b"d" * 32, "answer")
        # Each op: a retry check that misses (the id left the cache 10k ops ago), then
        # storing the answer; the cache is full, so every put also evicts the oldest entry.
        return Case(
            name,
            "k = nxt(); c.get(k); c.put(k, d, a)",
            {"c": cache, "nxt": itertools.cycle(vote_ids).__next__, "d": b"d" * 32, "a": "answer"},
        )

    def limiter_case(module: Any, name: str) -> Case:
        limiter = module.RateLimiter(100.0, 20, 10_000)
        keys = [f"10.0.{i >> 8 & 255}.{i & 255}" for i in range(5_000)]
        return Case(
            name,
            "l.acquire(nxt(), now)",
            {"l": limiter, "nxt": itertools.cycle(keys).__next__, "now": NOW},
        )

    cases = [
        Case(
            "fast.verify_hs256",
            "v(hs, keys, *checks)",
            {**common, "v": fast.verify_token, "keys": fast_keys},
        ),
        Case(
            "reference.verify_hs256",
            "v(hs, keys, *checks)",
            {**common, "v": reference.verify_token, "keys": ref_keys},
        ),
        Case(
            "pyjwt.verify_hs256",
            "d(hs, secret, algorithms=algs, audience=aud, issuer=iss, leeway=30)",
            {**common, "d": jwt.decode, "secret": secret, "algs": ["HS256"]},
        ),
        Case(
            "fast.verify_eddsa",
            "v(ed, keys, *checks)",
            {**common, "v": fast.verify_token, "keys": fast_keys},
        ),
        Case(
            "reference.verify_eddsa",
            "v(ed, keys, *checks)",
            {**common, "v": reference.verify_token, "keys": ref_keys},
        ),
        Case(
            "pyjwt.verify_eddsa",
            "d(ed, pub, algorithms=algs, audience=aud, issuer=iss, leeway=30)",
            {**common, "d": jwt.decode, "pub": public, "algs": ["EdDSA"]},
        ),
        Case(
            "cryptography.ed25519_verify",
            "verify(sig, data)",
            {
                "verify": public.verify,
                "sig": fast.b64url_decode(ed_sig),
                "data": signing_input.encode(),
            },
        ),
        # Encoding includes the event's HMAC-SHA256 (docs/ARCHITECTURE.md, Event schema).
        Case(
            "fast.encode_event",
            "enc(*vote, signer)",
            {
                "enc": fast.encode_event,
                "vote": vote,
                "signer": fast.EventSigner(event_key.kid, event_key.secret),
            },
        ),
        Case(
            "reference.encode_event",
            "enc(*vote, signer)",
            {
                "enc": reference.encode_event,
                "vote": vote,
                "signer": reference.EventSigner(event_key.kid, event_key.secret),
            },
        ),
        Case(
            "msgspec.encode_event",
            "seal(VoteEvent(1, *vote), key)",
            {"seal": event.seal, "VoteEvent": event.VoteEvent, "vote": vote, "key": event_key},
        ),
        Case(
            "fast.sign_receipt",
            "sign(key, *vote[:5])",
            {"sign": fast.sign_receipt, "key": receipt_key, "vote": vote},
        ),
        Case(
            "reference.sign_receipt",
            "sign(key, *vote[:5])",
            {"sign": reference.sign_receipt, "key": receipt_key, "vote": vote},
        ),
        cache_case(fast, "fast.idempotency_get_put"),
        cache_case(reference, "reference.idempotency_get_put"),
        limiter_case(fast, "fast.rate_limit_acquire"),
        limiter_case(reference, "reference.rate_limit_acquire"),
    ]
    return cases


RATIOS: dict[str, tuple[str, str]] = {
    # name: (numerator, denominator) of ns_per_op; > 1 means the fast path is that much faster
    "verify_hs256.pyjwt_over_fast": ("pyjwt.verify_hs256", "fast.verify_hs256"),
    "verify_hs256.reference_over_fast": ("reference.verify_hs256", "fast.verify_hs256"),
    "verify_eddsa.pyjwt_over_fast": ("pyjwt.verify_eddsa", "fast.verify_eddsa"),
    "verify_eddsa.reference_over_fast": ("reference.verify_eddsa", "fast.verify_eddsa"),
    # the one ratio where lower is better: whole-token verify / bare signature check
    "verify_eddsa.fast_over_cryptography": ("fast.verify_eddsa", "cryptography.ed25519_verify"),
    "encode_event.msgspec_over_fast": ("msgspec.encode_event", "fast.encode_event"),
    "encode_event.reference_over_fast": ("reference.encode_event", "fast.encode_event"),
    "sign_receipt.reference_over_fast": ("reference.sign_receipt", "fast.sign_receipt"),
    "idempotency.reference_over_fast": (
        "reference.idempotency_get_put",
        "fast.idempotency_get_put",
    ),
    "rate_limit.reference_over_fast": ("reference.rate_limit_acquire", "fast.rate_limit_acquire"),
}


def _calibrate(case: Case, target: float) -> None:
    timer = case.timer()
    loops = 1
    while True:
        elapsed = timer.timeit(loops)
        if elapsed >= target / 4 or loops >= 10**8:
            break
        loops *= 4 if elapsed < target / 40 else 2
    case.loops = max(1, int(loops * target / max(elapsed, 1e-9)))


def run(
    cases: list[Case], repeat: int, target: float, progress: Callable[[str], None] = lambda _: None
) -> None:
    for case in cases:  # warm-up and calibration
        case.timer().timeit(max(1, 10))
        _calibrate(case, target)
    for round_no in range(repeat):
        progress(f"round {round_no + 1}/{repeat}")
        for case in cases:
            elapsed = case.timer().timeit(case.loops)
            case.samples.append(elapsed / case.loops * 1e9)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import ssl

    import cryptography.hazmat.backends.openssl as crypto_openssl

    import gateway._fast as fast

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cython": _version("Cython"),
        "openssl_linked_by_gateway_fast": fast.OPENSSL_VERSION_TEXT,
        "openssl_of_cryptography": crypto_openssl.backend.openssl_version_text(),
        "openssl_of_python_ssl": ssl.OPENSSL_VERSION,
        "pyjwt": _version("PyJWT"),
        "cryptography": _version("cryptography"),
        "msgspec": _version("msgspec"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _fmt_ns(ns: float) -> str:
    return f"{ns:,.0f}" if ns >= 100 else f"{ns:.1f}"


def report(cases: list[Case]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    results = [
        {
            "name": c.name,
            "ns_per_op": statistics.median(c.samples),
            "min_ns": min(c.samples),
            "max_ns": max(c.samples),
            "rounds": len(c.samples),
            "loops": c.loops,
        }
        for c in cases
    ]
    by_name = {r["name"]: r["ns_per_op"] for r in results}
    ratios = {
        name: by_name[num] / by_name[den]
        for name, (num, den) in RATIOS.items()
        if num in by_name and den in by_name
    }
    return results, ratios


def render(results: list[dict[str, Any]], ratios: dict[str, float]) -> str:
    lines = ["| case | ns/op (median) | min | max | ops/s |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['name']} | {_fmt_ns(r['ns_per_op'])} | {_fmt_ns(r['min_ns'])} | "
            f"{_fmt_ns(r['max_ns'])} | {1e9 / r['ns_per_op']:,.0f} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f}x |" for name, value in ratios.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    repeat = max(5, args.repeat or (5 if args.quick else 9))
    target = args.target or (0.02 if args.quick else 0.2)

    cases = build_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    machine = machine_info()
    print(f"# gateway._fast micro-benchmarks — {machine['date']}", flush=True)
    print(
        f"{machine['cpu']}, {machine['cores']} cores, load {machine['loadavg']}, "
        f"Python {machine['python']}, Cython {machine['cython']}, "
        f"{machine['openssl_linked_by_gateway_fast']} (gateway._fast) / "
        f"{machine['openssl_of_cryptography']} (cryptography {machine['cryptography']}), "
        f"PyJWT {machine['pyjwt']}",
        flush=True,
    )
    machine["speed"] = probe.announced_speed(sys.stdout)
    run(cases, repeat, target, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    results, ratios = report(cases)
    machine["loadavg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    command = f"{PROG} {shlex.join(argv)}".strip()
    print(f"\n`{command}` — median of {repeat} rounds, ~{target:g} s per run\n")
    print(render(results, ratios))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "machine": machine,
            "command": command,
            "repeat": repeat,
            "target_s": target,
            "results": results,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
