"""Toxiproxy (github.com/Shopify/toxiproxy) between the services and Kafka / PostgreSQL.

The chaos stack's brokers each have a listener advertised at a proxy port
(``STACK_KAFKA_PROXIES`` in ``stack env``, see ``kafka_proxied_listener`` in
``deploy/local/stack``), so a gateway that bootstraps through the proxies reaches every
broker through them; one more proxy sits in front of PostgreSQL for the processors.
Toxics are added and removed through Toxiproxy's HTTP API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.env import BenchError, go_install
from bench.procs import Service, free_port

MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
VERSION = "v2.5.0"


def ensure_toxiproxy(env: dict[str, str]) -> Path:
    """The toxiproxy server in ``$VOTE_STACK_DIR/bin`` (named ``server``), ``go install``-ed
    on first use."""
    return go_install(env, MODULE, VERSION, "server", timeout_s=1800)


class Toxiproxy:
    """A running toxiproxy server and the proxies it holds."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.http = httpx.Client(base_url=api, timeout=10)

    def proxy(self, name: str, listen_port: int, upstream_port: int) -> None:
        resp = self.http.post(
            "/proxies",
            json={
                "name": name,
                "listen": f"127.0.0.1:{listen_port}",
                "upstream": f"127.0.0.1:{upstream_port}",
                "enabled": True,
            },
        )
        if resp.status_code not in (200, 201):
            raise BenchError(f"toxiproxy: proxy {name}: HTTP {resp.status_code} {resp.text}")

    def add(self, proxy: str, toxic: str, kind: str, **attributes: int) -> None:
        """A toxic on both directions of ``proxy`` (``toxic`` names it, for ``remove``)."""
        for stream in ("downstream", "upstream"):
            resp = self.http.post(
                f"/proxies/{proxy}/toxics",
                json={
                    "name": f"{toxic}-{stream}",
                    "type": kind,
                    "stream": stream,
                    "toxicity": 1.0,
                    "attributes": attributes,
                },
            )
            if resp.status_code not in (200, 201):
                raise BenchError(f"toxiproxy: toxic {toxic}: HTTP {resp.status_code} {resp.text}")

    def reset(self) -> None:
        """Every toxic removed, every proxy enabled."""
        self.http.post("/reset").raise_for_status()

    def close(self) -> None:
        self.http.close()


@contextlib.contextmanager
def running(env: dict[str, str], log_dir: Path) -> Iterator[Toxiproxy]:
    exe = ensure_toxiproxy(env)
    port = free_port()
    svc = Service(
        "toxiproxy",
        [str(exe), "-host", "127.0.0.1", "-port", str(port)],
        dict(env),
        log_dir / "toxiproxy.log",
        ready_url=f"http://127.0.0.1:{port}/version",
    )
    svc.start()
    try:
        svc.wait_ready(60)
        proxy = Toxiproxy(f"http://127.0.0.1:{port}")
        try:
            yield proxy
        finally:
            proxy.close()
    finally:
        svc.stop()
