"""Open-loop, constant-arrival-rate load with vegeta, and what one step of it measured.

vegeta (``attack -rate R/1s``) paces requests on its own clock and starts another worker
whenever all are busy, so a slow answer does not delay the next request. We read every
result back (``vegeta encode --to csv``) rather than its summary, for three reasons:

* p99.9 (vegeta's report stops at p99) and exact nearest-rank percentiles;
* the response bodies, to collect each acknowledged ``vote_id`` for the exactly-once check;
* coordinated omission on the generator's side. vegeta timestamps a request when a worker
  starts it; on two shared cores the generator itself can fall behind its schedule, and
  that wait would vanish from the latency. Request ``seq`` was due at
  ``t0 + seq / rate``; we add how late it actually started (as wrk2 does), so the
  percentiles are those of the intended open-loop arrival process.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import io
import json
import math
import os
import shlex
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from bench import cpu

NS_PER_MS = 1_000_000


class Row(NamedTuple):
    """One vegeta result (the columns of ``vegeta encode --to csv`` that we use)."""

    ts_ns: int  # when the request started (unix ns)
    code: int  # HTTP status, 0 for a transport error
    latency_ns: int
    error: str
    body: bytes
    seq: int


def parse_csv(text: Iterable[str]) -> list[Row]:
    """Rows of ``vegeta encode --to csv``: ts, code, latency, out, in, error, body(b64), ..."""
    rows = []
    for rec in csv.reader(text):
        if not rec:
            continue
        if len(rec) < 9:
            raise ValueError(f"unexpected vegeta csv record with {len(rec)} fields")
        try:
            body = base64.b64decode(rec[6]) if rec[6] else b""
        except binascii.Error:
            body = b""
        rows.append(Row(int(rec[0]), int(rec[1]), int(rec[2]), rec[5], body, int(rec[8])))
    return rows


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN if empty."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = math.ceil(q / 100.0 * n)
    return float(sorted_values[min(max(rank, 1), n) - 1])


def corrected_latencies_ns(rows: Sequence[Row], rate: int) -> tuple[list[int], list[int]]:
    """(latency + how late the request started vs. the schedule, the lateness) per row.

    The schedule is ``t0 + seq * 1e9 / rate``. ``t0`` is the earliest start consistent with
    every observed request (no request starts before it is due), so an on-time attack gets
    zero correction and a generator that stalls gets its stall charged to the requests
    that waited, exactly as a real open-loop client population would see it.
    """
    if not rows or rate <= 0:
        return [r.latency_ns for r in rows], [0] * len(rows)
    t0 = min(r.ts_ns - r.seq * 1_000_000_000 // rate for r in rows)
    lags = [max(0, r.ts_ns - (t0 + r.seq * 1_000_000_000 // rate)) for r in rows]
    return [r.latency_ns + lag for r, lag in zip(rows, lags, strict=True)], lags


def is_ok(row: Row) -> bool:
    return 200 <= row.code < 300 and not row.error


def acked_vote_id(row: Row) -> str | None:
    """The ``vote_id`` of a 2xx answer's JSON body (None when there is no body)."""
    return _ack(row)[0]


def _ack(row: Row) -> tuple[str | None, object]:
    """``vote_id`` and ``durability`` of a 2xx answer's JSON body (None when absent)."""
    acks = _acks(row)[1]
    return acks[0] if acks else (None, None)


def _acks(row: Row) -> tuple[int, list[tuple[str | None, object]]]:
    """Votes a 2xx answer acknowledged, and (``vote_id``, ``durability``) of each.

    A single vote's 2xx acknowledges one vote, with or without a body (nginx-204); a
    batch's answer (``results``) those of its results with code 202."""
    if not is_ok(row):
        return 0, []
    try:
        doc = json.loads(row.body) if row.body else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return 1, []
    results = doc.get("results")
    if isinstance(results, list):
        acks = [
            (r.get("vote_id") if isinstance(r.get("vote_id"), str) else None, r.get("durability"))
            for r in results
            if isinstance(r, dict) and r.get("code") == 202
        ]
        return len(acks), acks
    vote_id = doc.get("vote_id")
    return 1, [((vote_id if isinstance(vote_id, str) else None), doc.get("durability"))]


@dataclass
class StepResult:
    """What one constant-rate step measured; ``summary()`` is its JSON record."""

    target: str
    mode: str  # warmup | search | max | half-max | rate
    rate: int  # offered requests/s
    duration_s: float
    requests: int
    ok: int
    errors: int
    error_rate: float
    rps: float  # 2xx answers per second, first request to last answer
    send_rate: float  # requests/s vegeta actually started
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    service_p99_ms: float  # p99 as vegeta timed it, without the schedule correction
    send_lag_p99_ms: float  # how late the generator started requests (its own overload)
    codes: dict[str, int]
    error_samples: list[str]
    command: str = ""
    started_at: str = ""
    # Share of the last 10 s in which some runnable task waited for a CPU (Linux PSI),
    # read right after the step: near 0 on a quiet machine; high means the figures
    # include other tenants' work.
    cpu_pressure: float | None = None
    # Share of the machine's CPU time during the step that the hypervisor gave to other
    # guests (/proc/stat "steal"), in percent. PSI does not see it: a task waiting for a
    # CPU the host took away still counts as running. 0 on bare metal.
    cpu_steal: float | None = None
    # 2xx answers saying ``"durability": "spill"``: Kafka missed the spill deadline (or
    # was in trouble) for these. A latency tail with many of them is Kafka's, not HTTP's.
    acked_from_spill: int = 0
    # Votes acknowledged: the 2xx answers, except that a batch's answer counts the votes
    # it acknowledged. CPU per vote is counted over these.
    acked_votes: int = 0
    # CPU seconds of each process group during the step and µs of it per acknowledged
    # vote (``bench.cpu``); None where the step ran without a meter.
    cpu_s: dict[str, float | None] | None = None
    cpu_us_per_vote: dict[str, float | None] | None = None
    target_cpus: int | None = None  # CPUs the target may run on (its affinity)
    target_busy: float | None = None  # share of those CPUs the target kept busy
    # The rate at which the target's own CPUs would be busy all the time, from its CPU
    # per vote in this step.
    target_saturation_rps: float | None = None
    acked_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def acked(self) -> int:
        return self.ok

    def summary(self) -> dict[str, object]:
        doc = asdict(self)
        doc.pop("acked_ids")
        doc["acked"] = self.ok
        return doc


def summarize(
    target: str,
    mode: str,
    rate: int,
    duration_s: float,
    rows: Sequence[Row],
    command: str = "",
    started_at: str = "",
) -> StepResult:
    """Reduce the per-request rows of one step to a ``StepResult`` (pure)."""
    n = len(rows)
    ok_rows = [r for r in rows if is_ok(r)]
    corrected, lags = corrected_latencies_ns(rows, rate)
    lat = sorted(corrected)
    service = sorted(r.latency_ns for r in rows)
    if n:
        first = min(r.ts_ns for r in rows)
        last_start = max(r.ts_ns for r in rows)
        last_end = max(r.ts_ns + r.latency_ns for r in rows)
        span = max(last_end - first, 1) / 1e9
        rps = len(ok_rows) / span
        send_rate = (n - 1) / ((last_start - first) / 1e9) if last_start > first else 0.0
    else:
        rps = send_rate = 0.0
    codes = Counter(str(r.code) for r in rows)
    samples = Counter(
        f"{r.code} {r.error or r.body[:160].decode('utf-8', 'replace')}".strip()
        for r in rows
        if not is_ok(r)
    )
    errors = n - len(ok_rows)

    def ms(v: float) -> float:
        return round(v / NS_PER_MS, 3) if not math.isnan(v) else v

    answers = [_acks(r) for r in ok_rows]
    acks = [ack for _, mine in answers for ack in mine]
    acked_votes = sum(n for n, _ in answers)

    return StepResult(
        target=target,
        mode=mode,
        rate=rate,
        duration_s=duration_s,
        requests=n,
        ok=len(ok_rows),
        errors=errors,
        error_rate=round(errors / n, 6) if n else 1.0,
        rps=round(rps, 1),
        send_rate=round(send_rate, 1),
        p50_ms=ms(percentile(lat, 50)),
        p90_ms=ms(percentile(lat, 90)),
        p99_ms=ms(percentile(lat, 99)),
        p999_ms=ms(percentile(lat, 99.9)),
        max_ms=ms(float(lat[-1])) if lat else math.nan,
        service_p99_ms=ms(percentile(service, 99)),
        send_lag_p99_ms=ms(percentile(sorted(lags), 99)),
        codes=dict(codes),
        error_samples=[f"{c}x {s}" for s, c in samples.most_common(3)],
        command=command,
        started_at=started_at,
        acked_from_spill=sum(1 for _, durability in acks if durability == "spill"),
        acked_votes=acked_votes,
        acked_ids=[vote_id for vote_id, _ in acks if vote_id is not None],
    )


class Vegeta:
    """Runs ``vegeta attack`` for one step at a time and reads its results back."""

    def __init__(
        self,
        exe: Path,
        workdir: Path,
        *,
        cpus: str | None = None,
        max_workers: int = 4096,
        timeout_s: float = 5.0,
        max_body: int = 4096,
    ) -> None:
        self.exe = exe
        self.workdir = workdir
        self.cpus = cpus
        self.max_workers = max_workers
        self.timeout_s = timeout_s
        # Bytes of each answer vegeta keeps: a batch's answer must fit whole, or its
        # results cannot be read and its votes not counted.
        self.max_body = max_body
        self._n = 0

    def attack_argv(
        self, targets_file: Path, out_file: Path, rate: int, duration_s: float, name: str
    ) -> list[str]:
        argv = [
            str(self.exe),
            "attack",
            "-format=json",
            f"-targets={targets_file}",
            f"-rate={rate}/1s",
            f"-duration={duration_s:g}s",
            f"-timeout={self.timeout_s:g}s",
            f"-max-workers={self.max_workers}",
            f"-max-body={self.max_body}",
            f"-name={name}",
            f"-output={out_file}",
        ]
        if self.cpus:
            argv = ["taskset", "-c", self.cpus, *argv]
        return argv

    def step(
        self,
        target: str,
        mode: str,
        lines: list[str],
        rate: int,
        duration_s: float,
        *,
        meter: cpu.CpuMeter | None = None,
        target_pid: int | None = None,
    ) -> StepResult:
        """Send ``lines`` (vegeta JSON targets, at least rate*duration) at ``rate``/s;
        with ``meter``, also count the CPU each process group spent meanwhile."""
        self._n += 1
        stem = self.workdir / f"{self._n:04d}-{target}-{mode}-{rate}"
        targets_file = stem.with_suffix(".targets")
        out_file = stem.with_suffix(".bin")
        with open(targets_file, "w") as fh:
            fh.write("\n".join(lines))
            fh.write("\n")
        argv = self.attack_argv(targets_file, out_file, rate, duration_s, target)
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        target_roots = [target_pid] if target_pid else []
        times_before = cpu_times()
        cpu_before = meter.sample(target_roots) if meter else None
        wall_before = time.monotonic()
        try:
            res = subprocess.run(argv, capture_output=True, text=True)
            wall_s = time.monotonic() - wall_before
            cpu_after = meter.sample(target_roots) if meter else None
            times_after = cpu_times()
            if res.returncode != 0:
                raise RuntimeError(
                    f"vegeta attack failed ({res.returncode}): {res.stderr.strip()[-500:]}"
                )
            enc = subprocess.run(
                [str(self.exe), "encode", "--to", "csv", str(out_file)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows = parse_csv(io.StringIO(enc.stdout))
        finally:
            for path in (targets_file, out_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        res = summarize(
            target, mode, rate, duration_s, rows, command=shlex.join(argv), started_at=started_at
        )
        res.cpu_pressure = cpu_pressure()
        res.cpu_steal = steal_share(times_before, times_after)
        if cpu_before is not None and cpu_after is not None:
            res.cpu_s = cpu.used_seconds(cpu_before, cpu_after)
            res.cpu_us_per_vote = cpu.per_vote_us(res.cpu_s, res.acked_votes)
            if target_pid:
                res.target_cpus = cpu.cpus_of(target_pid)
                res.target_busy = cpu.busy_share(res.cpu_s["target"], wall_s, res.target_cpus)
                res.target_saturation_rps = cpu.saturation_rps(
                    res.cpu_us_per_vote["target"], res.target_cpus
                )
        return res


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (None where it is unreadable)."""
    try:
        with open("/proc/stat") as fh:
            return parse_cpu_times(fh.readline())
    except (OSError, ValueError):
        return None


def parse_cpu_times(line: str) -> tuple[int, int]:
    """(steal, total) of /proc/stat's ``cpu`` line. The fields are user nice system idle
    iowait irq softirq steal [guest guest_nice]; guest time is already inside user and
    nice, so it is not added again."""
    fields = line.split()
    if fields[0] != "cpu":
        raise ValueError(f"not the cpu line of /proc/stat: {line!r}")
    values = [int(v) for v in fields[1:9]]
    values += [0] * (8 - len(values))  # kernels before 2.6.11 had no steal field
    return values[7], sum(values)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percent of the CPU time between two ``cpu_times()`` readings that was stolen."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def cpu_pressure() -> float | None:
    """``some avg10`` of /proc/pressure/cpu in percent (None where PSI is unavailable)."""
    try:
        with open("/proc/pressure/cpu") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    for item in first[1:]:
        key, _, value = item.partition("=")
        if key == "avg10":
            return float(value)
    return None


def targets_needed(rate: int, duration_s: float) -> int:
    """Targets to hand vegeta for one step: it sends about rate*duration, plus slack."""
    return math.ceil(rate * duration_s * 1.01) + 16
