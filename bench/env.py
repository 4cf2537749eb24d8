"""Where things are: the repository, the local stack's environment, the tools we build.

The harness reads the same ``VOTE_*`` variables as the services. When they are not set
it asks ``deploy/local/stack env`` for them, so ``python -m bench ...`` works without an
``eval "$(deploy/local/stack env)"`` first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from core.kafka_security import client_config

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "deploy" / "local" / "stack"
GO_PEER_DIR = REPO / "bench" / "peers" / "go"

VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
VEGETA_VERSION = "v12.13.0"

_REQUIRED = ("VOTE_KAFKA_BOOTSTRAP", "VOTE_PG_DSN", "VOTE_STACK_DIR")


class BenchError(RuntimeError):
    """A precondition of a bench command is not met; the message says what to do."""


def parse_env_lines(text: str) -> dict[str, str]:
    """``export NAME=value`` / ``NAME=value`` lines (shell-quoted values) to a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        name, sep, value = line.partition("=")
        if not sep or not name.isidentifier():
            continue
        parts = shlex.split(value) if value else [""]
        out[name] = parts[0] if parts else ""
    return out


def stack_env() -> dict[str, str]:
    """``os.environ`` completed with ``deploy/local/stack env`` where VOTE_* are missing."""
    env = dict(os.environ)
    if all(env.get(k) for k in _REQUIRED):
        return env
    if STACK_SCRIPT.exists():
        try:
            text = subprocess.run(
                [str(STACK_SCRIPT), "env"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
                cwd=REPO,
            ).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise BenchError(f"`deploy/local/stack env` failed: {exc}") from exc
        for name, value in parse_env_lines(text).items():
            env.setdefault(name, value)
    env.setdefault("VOTE_STACK_DIR", str(REPO / ".stack"))
    missing = [k for k in _REQUIRED if not env.get(k)]
    if missing:
        raise BenchError(f"{', '.join(missing)} not set: run `deploy/local/stack up` first")
    return env


def kafka_config(env: dict[str, str]) -> dict[str, str]:
    """librdkafka settings of the harness's own Kafka clients: the stack's bootstrap and the
    same ``VOTE_KAFKA_*`` TLS/SASL settings the services read (core/kafka_security.py)."""
    return {"bootstrap.servers": env["VOTE_KAFKA_BOOTSTRAP"], **client_config(env)}


def preflight(env: dict[str, str], *, kafka: bool = True, postgres: bool = True) -> None:
    """Fail early, with what to do, when the stack's Kafka or PostgreSQL do not answer."""
    import socket

    if kafka:
        for hostport in env["VOTE_KAFKA_BOOTSTRAP"].split(","):
            host, _, port = hostport.strip().rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except OSError as exc:
                raise BenchError(
                    f"Kafka at {hostport} does not answer ({exc}): "
                    "is the stack up? (deploy/local/stack status)"
                ) from exc
    if postgres:
        import psycopg

        try:
            psycopg.connect(env["VOTE_PG_DSN"], connect_timeout=10).close()
        except psycopg.Error as exc:
            raise BenchError(
                f"PostgreSQL does not answer ({exc}): is the stack up? (deploy/local/stack status)"
            ) from exc


def stack_dir(env: dict[str, str]) -> Path:
    return Path(env.get("VOTE_STACK_DIR") or REPO / ".stack")


def bench_dir(env: dict[str, str]) -> Path:
    """Scratch space of the harness (targets files, results, nginx prefix, logs)."""
    path = stack_dir(env) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def go_binary() -> str:
    found = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if not found:
        raise BenchError("the Go toolchain is needed (vegeta, go-peer): install Go >= 1.22")
    return found


def _go_env(env: dict[str, str], gobin: Path) -> dict[str, str]:
    go_env = dict(env)
    go_env["GOBIN"] = str(gobin)
    go_env["PATH"] = os.pathsep.join([str(Path(go_binary()).parent), env.get("PATH", "")])
    return go_env


def go_install(
    env: dict[str, str], module: str, version: str, exe_name: str, timeout_s: float | None = None
) -> Path:
    """``$VOTE_STACK_DIR/bin/<exe_name>``, ``go install``-ed from ``module@version`` on
    first use."""
    gobin = stack_dir(env) / "bin"
    exe = gobin / exe_name
    if exe.exists():
        return exe
    gobin.mkdir(parents=True, exist_ok=True)
    print(f"installing {module}@{version} into {gobin} (first use) ...", flush=True)
    subprocess.run(
        [go_binary(), "install", f"{module}@{version}"],
        env=_go_env(env, gobin),
        check=True,
        cwd=REPO,
        timeout=timeout_s,
    )
    return exe


def ensure_vegeta(env: dict[str, str]) -> Path:
    """The vegeta binary in ``$VOTE_STACK_DIR/bin``, ``go install``-ed on first use."""
    return go_install(env, VEGETA_MODULE, VEGETA_VERSION, "vegeta")


def ensure_go_peer(env: dict[str, str]) -> Path:
    """``go build`` the go-peer into ``$VOTE_STACK_DIR/bin`` when its sources are newer."""
    gobin = stack_dir(env) / "bin"
    exe = gobin / "go-peer"
    sources = [p for p in GO_PEER_DIR.iterdir() if p.suffix in (".go", ".mod", ".sum")]
    newest = max(p.stat().st_mtime for p in sources)
    if exe.exists() and exe.stat().st_mtime >= newest:
        return exe
    gobin.mkdir(parents=True, exist_ok=True)
    print(f"building go-peer into {exe} ...", flush=True)
    subprocess.run(
        [go_binary(), "build", "-trimpath", "-o", str(exe), "."],
        env=_go_env(env, gobin),
        check=True,
        cwd=GO_PEER_DIR,
    )
    return exe


def ensure_nginx() -> str:
    """The nginx binary, apt-installed on first use (without starting the system service)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    print("installing nginx with apt (first use) ...", flush=True)
    # policy-rc.d exit 101 keeps the package from starting nginx on port 80.
    policy = Path("/usr/sbin/policy-rc.d")
    placed = not policy.exists()
    if placed:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"]
        if subprocess.run(install, env=apt_env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=apt_env, check=True)
            subprocess.run(install, env=apt_env, check=True)
    finally:
        if placed:
            policy.unlink()
    return shutil.which("nginx") or "/usr/sbin/nginx"


def python_exe() -> str:
    return sys.executable
