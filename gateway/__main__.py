"""``python -m gateway``: serve the vote API with granian (RSGI, uvloop).

The main process prepares prometheus_client's multiprocess directory, serves the merged
metrics on ``VOTE_METRICS_PORT``, records its pid under ``<stack>/run/`` (so
``deploy/local/stack down`` can stop it) and hands the workers to granian.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import sys

from core import keyset
from core import settings as settings_mod
from gateway.config import GatewaySettings


def _prepare_metrics_dir(settings: GatewaySettings) -> None:
    # Must happen before prometheus_client is imported anywhere in this process or in
    # the workers (they inherit the environment).
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    os.makedirs(settings.metrics_dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics_dir


def _forget_dead_workers(metrics_dir: str) -> None:
    """Drop the live-mode gauge files of workers that died (granian respawns them).

    prometheus_client sums ``livesum`` gauges over every file until told the process is
    dead; a worker killed with SIGKILL never says so, and its last value would stay in
    ``vote_spill_events`` for good.
    """
    from prometheus_client import multiprocess

    pids = set()
    for path in glob.glob(os.path.join(metrics_dir, "gauge_live*_*.db")):
        with contextlib.suppress(ValueError):
            pids.add(int(path.rsplit("_", 1)[1].removesuffix(".db")))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, metrics_dir)
        except PermissionError:
            pass


def _serve_metrics(settings: GatewaySettings) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    class LiveWorkersCollector(MultiProcessCollector):
        def collect(self):  # type: ignore[no-untyped-def]
            _forget_dead_workers(settings.metrics_dir)
            return super().collect()

    registry = CollectorRegistry()
    LiveWorkersCollector(registry)
    start_http_server(settings.metrics_port, settings.http_host, registry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings read from VOTE_* (secrets masked) and exit",
    )
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load(GatewaySettings)
    except (settings_mod.ConfigError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(settings_mod.describe(settings), indent=2))
        return 0
    try:  # unusable keys stop the gateway here, before any worker starts
        keyset.read_secret(settings.receipt_key_file)
        keyset.load(settings.event_keys_file).signing()
    except keyset.KeyFileError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes, TaskImpl
    from granian.http import HTTP1Settings, HTTP2Settings

    # The metrics files, pid file and (in the workers) the spill are for this user only.
    os.umask(0o077)
    _prepare_metrics_dir(settings)
    _serve_metrics(settings)
    run_dir = os.path.join(settings.stack_dir, "run")
    os.makedirs(run_dir, exist_ok=True)
    pid_file = os.path.join(run_dir, f"gateway-{settings.http_port}.pid")
    with open(pid_file, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    try:
        Granian(
            "gateway.app:VoteGateway",
            address=settings.http_host,
            port=settings.http_port,
            interface=Interfaces.RSGI,
            loop=Loops.uvloop,
            workers=settings.workers,
            http=HTTPModes(settings.granian_http),
            task_impl=TaskImpl(settings.granian_task_impl),
            runtime_mode=RuntimeModes(settings.granian_runtime_mode),
            runtime_threads=settings.granian_runtime_threads,
            factory=True,
            backlog=4096,
            # Slow clients: headers within a deadline and a size (431 past it), and a
            # bounded number of connections per worker (more wait in the listen backlog).
            backpressure=settings.max_connections_per_worker,
            http1_settings=HTTP1Settings(
                header_read_timeout=settings.header_read_timeout_ms,
                max_buffer_size=settings.max_header_bytes,
            ),
            http2_settings=HTTP2Settings(max_headers_size=settings.max_header_bytes),
            log_access=False,
            respawn_failed_workers=True,
            workers_kill_timeout=15,
        ).serve()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
