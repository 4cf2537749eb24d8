"""Admin path for operators and tests: keys, elections, test tokens.

    python -m gateway.admin init-keys [--rotate | --retire KID | --revoke KID]
    python -m gateway.admin create-election --election E --candidates a,b,c [--policy first_wins]
    python -m gateway.admin mint --election E --voters N --out votes.jsonl [--alg HS256|EdDSA]
    python -m gateway.admin token --election E --voter V

In production tokens come from the identity service; ``mint`` stands in for it so that
tests and benchmarks can sign votes with the same keys the gateway trusts. ``mint`` and
``token`` sign with PyJWT, which the services do not need: it comes with the ``admin``
extra (``pip install 'vote-platform[admin]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core import elections, keyset
from core import settings as settings_mod
from gateway._fast import b64url_decode, b64url_encode
from gateway.config import DEFAULT_TOKEN_ISSUER, GatewaySettings

MISSING_PYJWT = (
    "signing tokens needs PyJWT, which is not installed: "
    "pip install 'vote-platform[admin]' (or: pip install 'pyjwt[crypto]')"
)


class MissingExtra(RuntimeError):
    """An optional dependency of an admin command is not installed."""


def _pyjwt() -> ModuleType:
    try:
        import jwt
    except ImportError:
        raise MissingExtra(MISSING_PYJWT) from None
    return jwt


def keys_dir(settings: GatewaySettings) -> str:
    return os.path.dirname(settings.jwks_file)


def init_keys(settings: GatewaySettings, *, rotate: bool = False) -> dict[str, str]:
    """Create the token keys (the issuer's private keys and the gateway's verification
    keys), the event keys and the receipt key, each where it is missing.

    Idempotent: existing keys are kept unless ``rotate``, which adds a new token kid of
    each kind beside the old ones (tokens signed with either stay valid) and a new event
    key that signs from now on, the previous one retired (it still verifies).
    """
    directory = keys_dir(settings)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    issuer_file = os.path.join(directory, "issuer.json")
    if rotate or not os.path.exists(issuer_file):
        _add_token_keys(settings, issuer_file)
    if rotate or not os.path.exists(settings.event_keys_file):
        _add_event_key(settings.event_keys_file)
    if not os.path.exists(settings.receipt_key_file):
        _write_private(settings.receipt_key_file, os.urandom(32))
    return {
        "jwks": settings.jwks_file,
        "issuer": issuer_file,
        "event": settings.event_keys_file,
        "receipt": settings.receipt_key_file,
    }


def _add_event_key(path: str) -> None:
    document: dict[str, Any] = {"keys": []}
    if os.path.exists(path):
        with open(path) as fh:
            document = json.load(fh)
    for key in document["keys"]:
        if key.get("status", keyset.ACTIVE) == keyset.ACTIVE:
            key["status"] = keyset.RETIRED
    generation = 1 + max((_generation(k["kid"]) for k in document["keys"]), default=0)
    document["keys"].append(
        {"kid": f"ev-{generation}", "k": keyset.b64url(os.urandom(32)), "status": keyset.ACTIVE}
    )
    keyset.parse(document, path)  # never write a file the services would refuse
    _write_private(path, json.dumps(document, indent=2).encode())


def _generation(kid: str) -> int:
    tail = kid.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def retire_key(settings: GatewaySettings, kid: str) -> str:
    """Stop signing with ``kid``; what it signed still verifies. Returns where it was."""
    return _change_key(settings, kid, revoke=False)


def revoke_key(settings: GatewaySettings, kid: str) -> str:
    """Remove ``kid``: nothing it signed verifies any more (the services reload their key
    files within seconds). Returns where it was."""
    return _change_key(settings, kid, revoke=True)


def _change_key(settings: GatewaySettings, kid: str, *, revoke: bool) -> str:
    issuer_file = os.path.join(keys_dir(settings), "issuer.json")
    for path in (settings.event_keys_file, issuer_file):
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            document = json.load(fh)
        if not any(k["kid"] == kid for k in document["keys"]):
            continue
        if revoke:
            document["keys"] = [k for k in document["keys"] if k["kid"] != kid]
        else:
            for k in document["keys"]:
                if k["kid"] == kid:
                    k["status"] = keyset.RETIRED
        if path == settings.event_keys_file:
            keyset.parse(document, path).signing()  # an event key must remain to sign with
            _write_private(path, json.dumps(document, indent=2).encode())
        else:
            _write_token_keys(settings, issuer_file, document)
        return path
    raise KeyError(f"no key {kid!r} in {settings.event_keys_file} or {issuer_file}")


def _add_token_keys(settings: GatewaySettings, issuer_file: str) -> None:
    issuer: dict[str, Any] = {"keys": []}
    if os.path.exists(issuer_file):
        with open(issuer_file) as fh:
            issuer = json.load(fh)
    # The name tokens carry in ``iss``; the gateway checks it (VOTE_TOKEN_ISSUER).
    issuer["iss"] = settings.token_issuer
    generation = len(issuer["keys"]) // 2 + 1
    ed = Ed25519PrivateKey.generate()
    issuer["keys"] += [
        {
            "kid": f"hs-{generation}",
            "kty": "oct",
            "alg": "HS256",
            "k": b64url_encode(os.urandom(32)),
        },
        {
            "kid": f"ed-{generation}",
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "x": b64url_encode(
                ed.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
            ),
            "d": b64url_encode(
                ed.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            ),
        },
    ]
    _write_token_keys(settings, issuer_file, issuer)


def _write_token_keys(settings: GatewaySettings, issuer_file: str, issuer: dict[str, Any]) -> None:
    # The gateway's file holds no Ed25519 private part and no issuer-side status: a
    # retired key still verifies, a revoked one is gone from both. (HS256 is symmetric:
    # its secret is necessarily in both, so the gateway could mint such tokens.)
    public = {
        "keys": [
            {k: v for k, v in key.items() if k not in ("d", "status")} for key in issuer["keys"]
        ]
    }
    _write_private(issuer_file, json.dumps(issuer, indent=2).encode())
    _write_private(settings.jwks_file, json.dumps(public, indent=2).encode())


def _write_private(path: str, data: bytes) -> None:
    """Replace ``path`` whole with ``data``, mode 0600.

    Through a new temporary file with a random name, created O_EXCL|O_NOFOLLOW (mkstemp),
    so a file or symlink planted in the key directory is never opened or followed.
    """
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_election(
    dsn: str,
    election_id: str,
    candidates: Sequence[str],
    policy: str = "first_wins",
    *,
    title: str = "",
    opens_at: float | None = None,
    closes_at: float | None = None,
) -> None:
    """Create or update an election and its candidates (upsert); ``opens_at`` and
    ``closes_at`` in unix seconds, None for an open end."""
    with psycopg.connect(dsn) as conn:
        elections.write(
            conn,
            election_id,
            candidates,
            policy,
            title=title,
            opens_at_us=None if opens_at is None else elections.micros(opens_at),
            closes_at_us=None if closes_at is None else elections.micros(closes_at),
        )


def _load_issuer(issuer_file: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """The issuer's name and its newest key of each alg."""
    with open(issuer_file) as fh:
        doc = json.load(fh)
    live = [k for k in doc["keys"] if k.get("status", keyset.ACTIVE) == keyset.ACTIVE]
    return doc.get("iss", DEFAULT_TOKEN_ISSUER), {k["alg"]: k for k in live}


def _signing_key(jwk: dict[str, Any]) -> Any:
    if jwk["kty"] == "oct":
        return b64url_decode(jwk["k"])
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(jwk["d"]))


def mint_token(
    issuer_file: str,
    election_id: str,
    voter_id: str,
    *,
    alg: str = "HS256",
    ttl_s: int = 3600,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """A token for one vote; ``jti`` (a fresh id by default) is the vote_id it authorizes."""
    iss, keys = _load_issuer(issuer_file)
    jwk = keys[alg]
    return _mint(
        jwk,
        _signing_key(jwk),
        iss,
        election_id,
        voter_id,
        ttl_s,
        time.time() if now is None else now,
        jti or uuid.uuid4().hex,
    )


def _mint(
    jwk: dict[str, Any],
    key: Any,
    iss: str,
    election_id: str,
    voter_id: str,
    ttl_s: int,
    now: float,
    jti: str,
) -> str:
    claims = {
        "iss": iss,
        "sub": voter_id,
        "aud": election_id,
        "iat": int(now),
        "nbf": int(now) - 1,
        "exp": int(now) + ttl_s,
        "jti": jti,
    }
    return _pyjwt().encode(claims, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})


def mint_votes(
    issuer_file: str,
    election_id: str,
    voters: int,
    alg: str = "HS256",
    seed: int | None = None,
    candidates: Sequence[str] | None = None,
    ttl_s: int = 6 * 3600,
) -> Iterator[dict[str, str]]:
    """N distinct voters, one signed vote each: {voter_id, vote_id, choice, token, body}."""
    rng = random.Random(seed)
    iss, keys = _load_issuer(issuer_file)
    jwk = keys[alg]
    key = _signing_key(jwk)
    choices = list(candidates or ("alice", "bob", "carol"))
    now = time.time()
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    for i in range(voters):
        voter_id = f"voter-{run}-{i:09d}"
        vote_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        choice = rng.choice(choices)
        yield {
            "voter_id": voter_id,
            "vote_id": vote_id,
            "choice": choice,
            "token": _mint(jwk, key, iss, election_id, voter_id, ttl_s, now, vote_id),
            "body": json.dumps({"vote_id": vote_id, "choice": choice}, separators=(",", ":")),
        }


def election_candidates(dsn: str, election_id: str) -> list[str]:
    """The election's candidates, sorted; empty when it does not exist."""
    with psycopg.connect(dsn) as conn:
        found = elections.load(conn, [election_id]).get(election_id)
    return sorted(found.candidates) if found is not None else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("init-keys", help="create, rotate, retire or revoke keys")
    change = keys.add_mutually_exclusive_group()
    change.add_argument("--rotate", action="store_true", help="add a new kid of each kind")
    change.add_argument("--retire", metavar="KID", help="stop signing with KID (still verifies)")
    change.add_argument("--revoke", metavar="KID", help="remove KID: nothing it signed verifies")
    ce = sub.add_parser("create-election", help="create or update an election")
    ce.add_argument("--election", required=True)
    ce.add_argument("--candidates", required=True, help="comma-separated candidate ids")
    ce.add_argument("--policy", default="first_wins", help="first_wins | last_wins | max_votes:N")
    ce.add_argument("--title", default="")
    ce.add_argument("--opens-in", type=float, default=None, help="seconds from now")
    ce.add_argument("--closes-in", type=float, default=None, help="seconds from now")
    mint = sub.add_parser("mint", help="pre-sign N votes of distinct voters into a JSONL file")
    mint.add_argument("--election", required=True)
    mint.add_argument("--voters", type=int, required=True)
    mint.add_argument("--out", required=True)
    mint.add_argument("--alg", default="HS256", choices=("HS256", "EdDSA"))
    mint.add_argument("--seed", type=int, default=None)
    tok = sub.add_parser("token", help="print one token")
    tok.add_argument("--election", required=True)
    tok.add_argument("--voter", required=True)
    tok.add_argument("--alg", default="HS256", choices=("HS256", "EdDSA"))
    tok.add_argument("--ttl", type=int, default=3600)
    args = parser.parse_args(argv)

    if args.command in ("mint", "token"):
        try:
            _pyjwt()
        except MissingExtra as exc:
            print(exc, file=sys.stderr)
            return 2
    settings = settings_mod.load(GatewaySettings)
    issuer_file = os.path.join(keys_dir(settings), "issuer.json")
    if args.command == "init-keys" and (args.retire or args.revoke):
        try:
            where = (retire_key if args.retire else revoke_key)(
                settings, args.retire or args.revoke
            )
        except (KeyError, keyset.KeyFileError) as exc:
            print(f"init-keys: {exc}", file=sys.stderr)
            return 2
        print(f"{'retired' if args.retire else 'revoked'} {args.retire or args.revoke} in {where}")
    elif args.command == "init-keys":
        print(json.dumps(init_keys(settings, rotate=args.rotate)))
    elif args.command == "create-election":
        now = time.time()
        try:
            create_election(
                settings.pg_dsn,
                args.election,
                [c for c in args.candidates.split(",") if c],
                args.policy,
                title=args.title,
                opens_at=None if args.opens_in is None else now + args.opens_in,
                closes_at=None if args.closes_in is None else now + args.closes_in,
            )
        except elections.PolicyError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"election {args.election} ready")
    elif args.command == "mint":
        candidates = election_candidates(settings.pg_dsn, args.election)
        if not candidates:
            print(
                f"election {args.election!r} has no candidates (create it first)", file=sys.stderr
            )
            return 2
        with open(args.out, "w") as fh:
            for vote in mint_votes(
                issuer_file, args.election, args.voters, args.alg, args.seed, candidates
            ):
                fh.write(json.dumps(vote) + "\n")
        print(f"{args.voters} votes written to {args.out}")
    elif args.command == "token":
        print(mint_token(issuer_file, args.election, args.voter, alg=args.alg, ttl_s=args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
