"""The services under test in one scenario: a gateway with two workers and two processor
members, each processor member a process of its own so one can be killed alone.

They are ``bench.targets`` services (process groups, logs, readiness probe), started with
the chaos stack's environment plus what the scenario asks for, and stopped at its end.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from bench.memory import worker_pids
from bench.procs import Service, free_port
from bench.targets import TargetConfig, make_target, processor_service

GATEWAY_WORKERS = 2
PROCESSOR_MEMBERS = 2


class Fleet:
    def __init__(
        self,
        env: dict[str, str],
        run_dir: Path,
        election: str,
        gateway_env: dict[str, str] | None = None,
        processor_env: dict[str, str] | None = None,
    ) -> None:
        from core import settings as settings_mod
        from gateway import admin
        from gateway.config import GatewaySettings

        self.env = env
        self.run_dir = run_dir
        self.processor_env = {
            "VOTE_PROCESSOR_MEMBERS": "1",
            "VOTE_PROCESSOR_LOG_LEVEL": "INFO",
            **(processor_env or {}),
        }
        keys = admin.init_keys(settings_mod.load(GatewaySettings, env))
        self.issuer_file = keys["issuer"]
        cfg = TargetConfig(
            env=env,
            run_dir=run_dir,
            workers=GATEWAY_WORKERS,
            jwks_file=keys["jwks"],
            receipt_key_file=keys["receipt"],
        )
        target = make_target("gateway", election, cfg)
        target.service.env.update(
            {
                "VOTE_SPILL_DIR": str(run_dir / "spill"),
                "VOTE_GATEWAY_ID": f"chaos-{run_dir.name}",
                "VOTE_LOG_LEVEL": "INFO",
                **(gateway_env or {}),
            }
        )
        self.gateway: Service = target.service
        self.base_url = target.base_url
        self.metrics_url = f"http://127.0.0.1:{self.gateway.env['VOTE_METRICS_PORT']}/metrics"
        self.processors: list[Service] = []
        self._started = 0

    def votes_url(self, election: str) -> str:
        return f"{self.base_url}/v1/elections/{election}/votes"

    def start(self, ready_timeout_s: float = 180.0) -> None:
        for _ in range(PROCESSOR_MEMBERS):
            self.start_processor()
        self.gateway.start()
        self.gateway.wait_ready(ready_timeout_s)

    def start_processor(self, extra_env: dict[str, str] | None = None) -> Service:
        """One more member of the processors' consumer group."""
        svc = processor_service(
            {**self.env, **self.processor_env, **(extra_env or {})}, self.run_dir
        )
        self._started += 1
        svc.name = f"processor-{self._started}"
        svc.log_path = self.run_dir / f"{svc.name}.log"
        svc.env["VOTE_PROCESSOR_METRICS_PORT"] = str(free_port())
        svc.start()
        self.processors.append(svc)
        return svc

    def live_processors(self) -> list[Service]:
        return [p for p in self.processors if p.alive()]

    def kill_processor(self, svc: Service) -> None:
        """SIGKILL of the member's process group: a crash, no shutdown code runs."""
        assert svc.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(30)

    def gateway_workers(self) -> list[int]:
        assert self.gateway.proc is not None
        return worker_pids(self.gateway.proc.pid)

    def stop(self) -> None:
        # The gateway first: its spill drains into Kafka while the processors still run.
        self.gateway.stop()
        for svc in self.processors:
            svc.stop()
