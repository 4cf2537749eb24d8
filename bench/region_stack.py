"""The two simulated regions of ``deploy/local/regions`` and the services run in them.

``Regions`` starts the servers (``regions up``), reads each region's environment, starts a
gateway and a processor per region with pid files in the region's ``run/`` directory (so
``regions kill A`` kills them with the rest of the region), and wraps the script's
fault verbs (kill and start a region, stop and start MirrorMaker or the monitor).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import httpx

from bench.chaos.cluster import base_port_offset
from bench.env import REPO, BenchError, parse_env_lines

SCRIPT = REPO / "deploy" / "local" / "regions"
REGIONS = ("A", "B")
# The services outlive the Regions object on purpose (their pid files stop them); holding
# their Popen objects keeps Python from warning, when one is collected, that it still runs.
_SERVICES: list[subprocess.Popen[bytes]] = []


class Regions:
    """Region A and B: their servers (through the script) and their services."""

    def __init__(self) -> None:
        offset = base_port_offset()
        # Gateways and processor metrics on 20000 + offset + 10..; the formation uses +0..2.
        self._port_base = 20000 + offset + 10
        self.keys_dir = REPO / ".stack" / "regions" / "keys"
        self._env: dict[str, dict[str, str]] = {}

    # -- the script ----------------------------------------------------------------------

    def script(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOTE_")}
        env.setdefault("KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m")
        proc = subprocess.run(
            [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise BenchError(f"regions {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def up(self) -> None:
        if subprocess.run([str(SCRIPT), "status"], capture_output=True).returncode != 0:
            self.script("up")

    def env(self, region: str) -> dict[str, str]:
        if region not in self._env:
            env = parse_env_lines(self.script("env", region))
            env["VOTE_JWKS_FILE"] = str(self.keys_dir / "jwks.json")
            env["VOTE_RECEIPT_KEY_FILE"] = str(self.keys_dir / "receipt.key")
            self._env[region] = env
        return self._env[region]

    def service_env(self, region: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOTE_")}
        env.update(self.env(region))
        return env

    def run_dir(self, region: str) -> Path:
        return Path(self.env(region)["VOTE_STACK_DIR"]) / "run"

    def log_dir(self, region: str) -> Path:
        return Path(self.env(region)["VOTE_STACK_DIR"]) / "logs"

    # -- ports ---------------------------------------------------------------------------

    def http_port(self, region: str) -> int:
        return self._port_base + REGIONS.index(region)

    def gateway_metrics_port(self, region: str) -> int:
        return self._port_base + 2 + REGIONS.index(region)

    def processor_metrics_port(self, region: str) -> int:
        return self._port_base + 4 + REGIONS.index(region)

    def gateway_url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.http_port(region)}"

    # -- services ------------------------------------------------------------------------

    def prepare_schema_and_keys(self) -> None:
        env = self.service_env("A")
        # init-keys creates the token keys' directory, not the event keys' one.
        for key in ("VOTE_EVENT_KEYS_FILE", "VOTE_JWKS_FILE"):
            if env.get(key):
                Path(env[key]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        py = str(REPO / ".venv" / "bin" / "python")
        for args in (["-m", "processor", "migrate"], ["-m", "gateway.admin", "init-keys"]):
            proc = subprocess.run([py, *args], env=env, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise BenchError(f"{' '.join(args)} failed: {proc.stderr[-2000:]}")

    def start_services(self, region: str) -> None:
        """(Re)start the region's processor and gateway in their own sessions."""
        run, logs = self.run_dir(region), self.log_dir(region)
        run.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        py = str(REPO / ".venv" / "bin" / "python")
        env = self.service_env(region)
        env.update(
            {
                "VOTE_PROCESSOR_METRICS_PORT": str(self.processor_metrics_port(region)),
                "VOTE_PROCESSOR_MEMBERS": "1",
                # Two workers: more of a crowded machine's CPU for the region that serves both.
                "VOTE_WORKERS": "2",
                "VOTE_HTTP_PORT": str(self.http_port(region)),
                "VOTE_METRICS_PORT": str(self.gateway_metrics_port(region)),
                "VOTE_GATEWAY_ID": f"gw-{region}",
                # Every voter of the load is distinct; the rate limits are not under test.
                "VOTE_RATE_IP_PER_S": "100000",
                "VOTE_RATE_IP_BURST": "100000",
            }
        )
        for name, args in (("processor", ["-m", "processor"]), ("gateway", ["-m", "gateway"])):
            self._stop_pidfile(run / f"{name}.pid")
            with open(logs / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    [py, *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=REPO,
                )
            (run / f"{name}.pid").write_text(f"{proc.pid}\n")
            _SERVICES.append(proc)

    def wait_ready(self, region: str, timeout_s: float = 300) -> None:
        url = f"{self.gateway_url(region)}/readyz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise BenchError(f"gateway of region {region} not ready after {timeout_s:.0f}s ({url})")

    def stop_services(self, region: str) -> None:
        for name in ("gateway", "processor"):
            self._stop_pidfile(self.run_dir(region) / f"{name}.pid")

    @staticmethod
    def _stop_pidfile(path: Path) -> None:
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.killpg(pid, 15)
        except OSError:
            path.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except OSError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(OSError):
                os.killpg(pid, 9)
        path.unlink(missing_ok=True)

    # -- faults --------------------------------------------------------------------------

    def kill(self, region: str) -> float:
        """kill -9 every process of the region; returns when (Unix time) they stopped."""
        out = self.script("kill", region, timeout=120).split()
        return float(out[-1]) if out else time.time()

    def start(self, region: str) -> None:
        self.script("start", region)

    def promote(self, region: str) -> None:
        if self.primary() != region:
            self.script("promote", region, timeout=600)

    def primary(self) -> str | None:
        """The region whose PostgreSQL node the monitor calls primary (None: none yet)."""
        out = self.script("pg-state", timeout=30, check=False)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("primary", "wait_primary", "single"):
                return parts[0].upper()
        return None
