"""The systems under load, started and stopped by the harness itself.

Each target is one process group (``start_new_session``): stopping it sends SIGTERM to
the whole group (granian/uvicorn/nginx workers included), then SIGKILL after a grace
period, so no worker outlives a bench command. Targets listen on free loopback ports, so
they never clash with a gateway someone runs on :8080.

* ``gateway``      — ``python -m gateway``: this project, full semantics.
* ``nginx-204``    — nginx answering 204 to the same requests: this machine's ceiling.
* ``fastapi-peer`` — FastAPI + uvicorn + aiokafka with the gateway's semantics.
* ``go-peer``      — net/http + franz-go with the gateway's semantics.
* ``granian-floor`` — granian serving an RSGI app that only reads the body and answers
  202: the framework's own ceiling (optional; not in the default set).
* ``granian-kafka-floor`` — the gateway's required parts (granian, msgspec, its Kafka
  producer) with none of its vote work: the ceiling of any gateway built on them
  (optional; not in the default set).
* ``gateway+NAME`` — the gateway again with some of its settings changed
  (``--variant gateway+NAME:VOTE_X=1,VOTE_Y=2``): a lever measured side by side with the
  gateway as it ships, in the same interleaved run.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from bench.env import REPO, ensure_go_peer, ensure_nginx, python_exe, stack_dir
from bench.procs import Service, free_port
from core.event import TOPIC

VARIANT_PREFIX = "gateway+"

TARGETS = (
    "gateway",
    "nginx-204",
    "fastapi-peer",
    "go-peer",
    "granian-floor",
    "granian-kafka-floor",
)
DEFAULT_TARGETS = ("gateway", "nginx-204", "fastapi-peer", "go-peer")
PEERS_DIR = Path(__file__).resolve().parent / "peers"


@dataclass
class Target:
    """One system under load: its service, its base URL and its election."""

    name: str
    base_url: str
    election: str
    service: Service
    produces: bool  # sends votes to Kafka (then the processor stores them)
    fresh_votes: bool  # needs a never-sent vote per request (deduplicates by vote_id)


@dataclass
class TargetConfig:
    """What every target shares: stack environment, Kafka settings, worker count."""

    env: dict[str, str]
    run_dir: Path
    workers: int = 1
    cpus: str | None = None  # taskset -c list for the targets (None: not pinned)
    topic: str = TOPIC
    linger_ms: float = 2.0
    jwks_file: str = ""
    receipt_key_file: str = ""
    # gateway+NAME -> the VOTE_* settings that differ from the gateway's (parse_variant)
    variants: dict[str, dict[str, str]] = field(default_factory=dict)


def is_gateway(name: str) -> bool:
    """The gateway or one of its variants: full semantics, verified exactly-once."""
    return name == "gateway" or name.startswith(VARIANT_PREFIX)


def election_for(run_id: str, name: str) -> str:
    """The target's own election id: the run's id and the target's name, in the
    characters an election id may hold ([A-Za-z0-9._-], the schema's check)."""
    return f"{run_id}-{name.replace('+', '.')}"


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``gateway+NAME:VOTE_X=1,VOTE_Y=2`` -> (``gateway+NAME``, {VOTE_X: 1, VOTE_Y: 2}).

    Only the gateway's own ``VOTE_*`` settings may differ; whether their values are valid
    is the gateway's settings parser's to say (the session loads them before any start).
    """
    name, sep, assignments = spec.partition(":")
    suffix = name.removeprefix(VARIANT_PREFIX)
    if (
        not sep
        or not name.startswith(VARIANT_PREFIX)
        or not suffix.replace("-", "").isascii()
        or not suffix.replace("-", "").isalnum()
        or len(suffix) > 20  # the election id (run id + name) must fit in 64 characters
    ):
        raise ValueError(
            f"--variant {spec!r}: expected gateway+NAME:VOTE_X=value[,VOTE_Y=value...] "
            "(NAME of at most 20 letters, digits and '-')"
        )
    env: dict[str, str] = {}
    for item in filter(None, (a.strip() for a in assignments.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("VOTE_"):
            raise ValueError(f"--variant {spec!r}: {item!r} is not VOTE_X=value")
        env[key] = value
    if not env:
        raise ValueError(f"--variant {spec!r}: no setting changed")
    return name, env


def _pinned(argv: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def _granian_argv(app: str, port: int, cfg: TargetConfig) -> list[str]:
    """granian's CLI with the gateway's server settings, serving ``bench.peers.<app>``."""
    return [
        python_exe(),
        "-m",
        "granian",
        "--interface",
        "rsgi",
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(cfg.workers),
        "--backlog",
        "4096",
        "--no-access-log",
        "--log-level",
        "warning",
        f"bench.peers.{app}",
    ]


def make_target(name: str, election: str, cfg: TargetConfig) -> Target:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = cfg.run_dir / f"{name}.log"
    env = dict(cfg.env)
    if is_gateway(name):
        if name != "gateway" and name not in cfg.variants:
            raise ValueError(f"unknown target {name!r}: no --variant defines it")
        env.update(
            {
                "VOTE_HTTP_HOST": "127.0.0.1",
                "VOTE_HTTP_PORT": str(port),
                "VOTE_METRICS_PORT": str(free_port()),
                "VOTE_WORKERS": str(cfg.workers),
                "VOTE_TOPIC": cfg.topic,
                "VOTE_KAFKA_LINGER_MS": f"{cfg.linger_ms:g}",
                # One load generator on one address stands in for millions of voters: the
                # per-address limit would measure the limiter, not the gateway.
                "VOTE_RATE_IP_PER_S": "1000000000",
                "VOTE_RATE_IP_BURST": "1000000000",
                "VOTE_MAX_IN_FLIGHT_PER_CLIENT": "1000000000",
                # Its own spill for each variant: one gateway must not adopt another's.
                "VOTE_SPILL_DIR": str(
                    stack_dir(cfg.env) / "bench" / name.replace("gateway", "spill")
                ),
                "VOTE_GATEWAY_ID": f"bench-{name}",
                "VOTE_LOG_LEVEL": "WARNING",
            }
        )
        env.update(cfg.variants.get(name, {}))
        if cfg.jwks_file:
            env["VOTE_JWKS_FILE"] = cfg.jwks_file
        svc = Service(
            name,
            _pinned([python_exe(), "-m", "gateway"], cfg.cpus),
            env,
            log,
            ready_url=f"{base}/readyz",
        )
        return Target(name, base, election, svc, produces=True, fresh_votes=True)
    if name == "nginx-204":
        prefix = cfg.run_dir / "nginx"
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        text = Template((PEERS_DIR / "nginx-204.conf").read_text()).substitute(
            workers=cfg.workers, port=port, prefix=prefix
        )
        conf.write_text(text)
        argv = [ensure_nginx(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        svc = Service(name, _pinned(argv, cfg.cpus), env, log, ready_url=f"{base}/readyz")
        return Target(name, base, election, svc, produces=False, fresh_votes=False)
    if name == "granian-floor":
        svc = Service(
            name,
            _pinned(_granian_argv("granian_floor:app", port, cfg), cfg.cpus),
            env,
            log,
            ready_url=f"{base}/readyz",
        )
        return Target(name, base, election, svc, produces=False, fresh_votes=False)
    peer_env = {
        "PEER_KAFKA_BOOTSTRAP": cfg.env["VOTE_KAFKA_BOOTSTRAP"],
        "PEER_TOPIC": cfg.topic,
        "PEER_JWKS_FILE": cfg.jwks_file,
        "PEER_RECEIPT_KEY_FILE": cfg.receipt_key_file,
        "PEER_LINGER_MS": f"{cfg.linger_ms:g}",
        "PEER_GATEWAY_ID": f"bench-{name}",
    }
    env.update(peer_env)
    if name == "fastapi-peer":
        argv = [
            python_exe(),
            "-m",
            "uvicorn",
            "bench.peers.fastapi_peer:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(cfg.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        svc = Service(name, _pinned(argv, cfg.cpus), env, log, ready_url=f"{base}/readyz")
        return Target(name, base, election, svc, produces=True, fresh_votes=False)
    if name == "granian-kafka-floor":
        argv = _granian_argv("granian_kafka_floor:app", port, cfg)
        svc = Service(name, _pinned(argv, cfg.cpus), env, log, ready_url=f"{base}/readyz")
        return Target(name, base, election, svc, produces=True, fresh_votes=False)
    if name == "go-peer":
        exe = ensure_go_peer(cfg.env)
        argv = [str(exe), "-addr", f"127.0.0.1:{port}"]
        svc = Service(name, _pinned(argv, cfg.cpus), env, log, ready_url=f"{base}/readyz")
        return Target(name, base, election, svc, produces=True, fresh_votes=False)
    raise ValueError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")


def processor_running(env: dict[str, str]) -> int | None:
    """The pid of the stack's processor when one is alive (``.stack/run/processor.pid``)."""
    pid_file = stack_dir(env) / "run" / "processor.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"processor" in cmdline else None


def processor_service(env: dict[str, str], run_dir: Path) -> Service:
    """A processor of our own (the consumer group's other members share the work)."""
    penv = dict(env)
    # A free port: never clash with the stack's :9101; the session reads
    # vote_ack_to_count_seconds from it.
    penv["VOTE_PROCESSOR_METRICS_PORT"] = str(free_port())
    penv.setdefault("VOTE_PROCESSOR_LOG_LEVEL", "WARNING")
    return Service("processor", [python_exe(), "-m", "processor"], penv, run_dir / "processor.log")


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [python_exe(), "-m", "processor", "migrate"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )


# The tables every produced vote grows. Autovacuum analyzes a table once 10 % of it
# changed and vacuums an insert-only one at 20 %: on the stack's database, filled by
# earlier runs, that lands in the middle of some later run at a random moment, and an
# ANALYZE of the 32 voters partitions takes a good share of a core for seconds, enough
# to move the gateway's p99 on two shared cores (bench/README.md). Doing it before the
# run leaves autovacuum nothing to do unless one run adds another 10 %. (In production
# PostgreSQL has its own hosts.)
_GROWING_TABLES = ("votes", "voters", "vote_rejections", "tallies", "consumer_offsets")


def settle_database(dsn: str) -> float:
    """VACUUM (ANALYZE) the vote tables now; returns the seconds it took."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {', '.join(_GROWING_TABLES)}")
    return time.monotonic() - started
