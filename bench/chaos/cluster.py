"""The chaos suite's stack: ``deploy/local/stack`` with 3 Kafka nodes, in its own directory.

It lives in ``.stack/chaos/`` on its own ports (the checkout's offset + ``PORT_SHIFT``), so a
chaos run never touches the checkout's stack, whose single broker the other integration
tests stop and freeze. ``stack up`` restarts it as recorded and never wipes it, so it is
created once and reused by later runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.env import REPO, STACK_SCRIPT, BenchError, parse_env_lines

NODES = 3
# Added to the checkout's port offset: far from every other helper's stack (offsets are
# multiples of 50) and from the checkout's own ports.
PORT_SHIFT = 20
# A small heap per broker: three of them share the machine with everything else.
DEFAULT_HEAP = "-Xms256m -Xmx512m"


def base_port_offset() -> int:
    """The checkout's own stack offset (STACK_PORT_OFFSET or .stack/port-offset)."""
    raw = os.environ.get("STACK_PORT_OFFSET")
    if raw is None:
        try:
            raw = (REPO / ".stack" / "port-offset").read_text().strip()
        except OSError:
            raw = "0"
    return int(raw or 0)


class Cluster:
    """The 3-node stack: start it, read its environment, and reach its servers' processes."""

    def __init__(self, directory: Path | None = None, port_offset: int | None = None) -> None:
        self.directory = directory or REPO / ".stack" / "chaos"
        self.port_offset = base_port_offset() + PORT_SHIFT if port_offset is None else port_offset
        self._env: dict[str, str] | None = None

    # -- the stack script -------------------------------------------------------------

    def script_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # Another stack's variables must not leak into this one's servers.
            if not k.startswith("VOTE_")
        }
        env["STACK_DIR"] = str(self.directory)
        env["STACK_PORT_OFFSET"] = str(self.port_offset)
        env.setdefault("KAFKA_HEAP_OPTS", DEFAULT_HEAP)
        # A listener per broker for Toxiproxy (the network scenario).
        env["STACK_KAFKA_PROXIED"] = "1"
        return env

    def stack(self, *args: str, timeout_s: float = 900.0) -> subprocess.CompletedProcess[str]:
        """``deploy/local/stack ARGS`` on this stack; the completed process (not checked)."""
        return subprocess.run(
            [str(STACK_SCRIPT), *args],
            env=self.script_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def up(self, timeout_s: float = 900.0) -> None:
        """Start what is not running (the first time: format a 3-node cluster)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # `stack status|down` with only STACK_DIR set then find the same ports.
        (self.directory / "port-offset").write_text(f"{self.port_offset}\n")
        done = self.stack("up", "--kafka-nodes", str(NODES), timeout_s=timeout_s)
        if done.returncode != 0:
            raise BenchError(f"chaos stack did not come up:\n{done.stderr[-3000:]}")
        self._env = None

    def down(self) -> None:
        self.stack("down", timeout_s=300.0)

    def env(self) -> dict[str, str]:
        """``os.environ`` with this stack's ``VOTE_*`` variables (``stack env``)."""
        if self._env is None:
            done = self.stack("env", timeout_s=60.0)
            if done.returncode != 0:
                raise BenchError(f"`stack env` failed: {done.stderr}")
            self._env = {**self.script_env(), **parse_env_lines(done.stdout)}
        return dict(self._env)

    @property
    def bootstrap(self) -> str:
        return self.env()["VOTE_KAFKA_BOOTSTRAP"]

    # -- brokers ----------------------------------------------------------------------

    def broker_pid(self, node: int) -> int | None:
        """The pid of Kafka node ``node`` (1-3) when it runs."""
        try:
            pid = int((self.directory / "pids" / f"kafka-{node}.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return None
        return pid if b"kafka.Kafka" in cmdline else None

    def kill_broker(self, node: int) -> None:
        """SIGKILL, like a crashed host; returns once the process is gone."""
        pid = self.broker_pid(node)
        if pid is None:
            raise BenchError(f"kafka-{node} is not running")
        os.kill(pid, signal.SIGCONT)  # a paused broker must die too, not linger stopped
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _alive(pid):
            if time.monotonic() > deadline:
                raise BenchError(f"kafka-{node} (pid {pid}) alive 60 s after SIGKILL")
            time.sleep(0.05)

    def signal_broker(self, node: int, sig: int) -> None:
        pid = self.broker_pid(node)
        if pid is None:
            raise BenchError(f"kafka-{node} is not running")
        os.kill(pid, sig)

    def cluster_id(self, timeout_s: float = 30.0) -> str:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return str(admin.describe_cluster(request_timeout=timeout_s).result(timeout_s).cluster_id)

    def leader_of(self, topic: str, partition: int = 0, timeout_s: float = 20.0) -> int:
        """The node id leading ``topic``'s ``partition``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        md = admin.list_topics(topic, timeout=timeout_s)
        leader = md.topics[topic].partitions[partition].leader
        if leader < 1:
            raise BenchError(f"{topic}[{partition}] has no leader")
        return int(leader)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def running(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster up for the block; stopped afterwards only if this block started it."""
    was_up = cluster.stack("status", timeout_s=60.0).returncode == 0
    cluster.up()
    try:
        yield cluster
    finally:
        if not was_up:
            cluster.down()
