"""Results of a bench run: medians over repeats, ratios, JSON, Markdown, a PNG plot.

JSON layout (``--json FILE``)::

    {"machine": {...}, "command": "...", "date": "...", "settings": {...},
     "runs": [{"target", "mode", "rate", "rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
               "errors", "acked", "cpu_us_per_vote": {"target", "broker", "loadgen",
               "processor", "postgres", "redis"}, "target_cpus", "target_busy",
               "target_saturation_rps", ...}],
     "ratios": {"gateway/nginx-204": {"max_rps": ..., "half_max_p99": ...}, ...},
     "steps": [every constant-rate step, search steps included],
     "verify": {"gateway": {"acked", "stored", "missing", "duplicates", ...}, ...}}

A run is the median of its repeats: ``rps`` and the percentiles are medians, ``errors``
and ``acked`` are totals over the repeats, ``repeats`` says how many there were.
``cpu_us_per_vote`` holds, per process group, the median over the repeats of its CPU
time per acknowledged vote (``bench.cpu``); ``target_saturation_rps`` the rate at which
the target's own CPUs would be busy all the time, next to the searched max.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from bench import cpu, probe
from bench.env import VEGETA_VERSION
from bench.loadgen import StepResult
from bench.verify import compare

MEDIAN_FIELDS = (
    "rps",
    "send_rate",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "service_p99_ms",
    "send_lag_p99_ms",
    "cpu_pressure",
    "cpu_steal",
    "target_busy",
    "target_saturation_rps",
)


def median_run(target: str, mode: str, rate: int, steps: Sequence[StepResult]) -> dict[str, object]:
    """One ``runs`` record from the repeats of one (target, mode, rate)."""
    run: dict[str, object] = {"target": target, "mode": mode, "rate": rate, "repeats": len(steps)}
    if not steps:
        run.update({f: None for f in MEDIAN_FIELDS})
        run.update({"errors": None, "acked": None, "requests": 0, "error_rate": None})
        return run
    for name in MEDIAN_FIELDS:
        values = [v for s in steps if (v := getattr(s, name)) is not None and not math.isnan(v)]
        run[name] = round(statistics.median(values), 3) if values else None
    requests = sum(s.requests for s in steps)
    errors = sum(s.errors for s in steps)
    run.update(
        {
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 6) if requests else None,
            "acked": sum(s.ok for s in steps),
            "acked_votes": sum(s.acked_votes for s in steps),
            "samples": {"rps": [s.rps for s in steps], "p99_ms": [s.p99_ms for s in steps]},
            "command": steps[0].command,
            "target_cpus": steps[0].target_cpus,
            "cpu_us_per_vote": median_cpu(steps),
        }
    )
    return run


def median_cpu(steps: Sequence[StepResult]) -> dict[str, float | None] | None:
    """Per process group, the median over the repeats of its µs of CPU per vote."""
    measured = [s.cpu_us_per_vote for s in steps if s.cpu_us_per_vote]
    if not measured:
        return None
    out: dict[str, float | None] = {}
    for group in cpu.GROUPS:
        values = [v for m in measured if (v := m.get(group)) is not None]
        out[group] = round(statistics.median(values), 1) if values else None
    return out


def step_line(res: StepResult, why: Sequence[str], *, noisy: bool, stolen: bool) -> str:
    """One measured step as printed during a session; ``why``: the criteria it failed,
    ``noisy`` / ``stolen``: whether to show its CPU pressure / steal."""
    return (
        f"{res.rps:>8.0f}/s  p50 {res.p50_ms:7.2f}  p99 {res.p99_ms:8.2f}  "
        f"p99.9 {res.p999_ms:8.2f} ms  err {res.error_rate:.2%}"
        + (f"  [{'; '.join(why)}]" if why else "  [ok]")
        + (f"  ({res.acked_from_spill} from the spill)" if res.acked_from_spill else "")
        + (f"  (cpu pressure {res.cpu_pressure:.0f}%)" if noisy else "")
        + (f"  (steal {res.cpu_steal:.0f}%)" if stolen else "")
    )


# Order of the runs in a report: the max runs, then those at half of it, then fixed rates.
RUN_ORDER = {"max": 0, "half-max": 1, "rate": 2, "kafka-stopped": 3}


def runs_of(
    run_steps: Mapping[tuple[str, str], Sequence[StepResult]],
    targets: Sequence[str],
    passes: Callable[[StepResult], bool],
    stored_counts: Mapping[str, Mapping[str, int]],
    best: Mapping[str, int | None],
    dead: Mapping[str, str],
) -> list[dict[str, object]]:
    """One median run per (target, mode) of ``run_steps``, in report order.

    ``stored_counts[target]``: ``vote_id -> rows in votes`` of a verified target, which
    adds the run's own stored/missing/duplicates. ``best[target]``: a ``--max`` search's
    result; a search that found no passing rate gets an empty max run with a note (the
    reason from ``dead``, or "no step passed").
    """
    runs: list[dict[str, object]] = []
    for (name, mode), steps in sorted(
        run_steps.items(),
        key=lambda kv: (RUN_ORDER.get(kv[0][1], 9), list(targets).index(kv[0][0])),
    ):
        run = median_run(name, mode, steps[0].rate, steps)
        run["passed"] = [passes(s) for s in steps]
        if name in stored_counts:
            ids = {v for s in steps for v in s.acked_ids}
            counts = compare(ids, stored_counts[name])
            run.update({k: counts[k] for k in ("stored", "missing", "duplicates")})
        runs.append(run)
    for name, rate in best.items():
        if rate is None:
            note = dead.get(name, "no step passed")
            runs.append({**median_run(name, "max", 0, []), "note": note})
    return runs


def failures(
    doc: Mapping[str, object], targets: Iterable[str], mode: str, dead: Mapping[str, str]
) -> list[str]:
    """Why a session failed (empty when it passed): a target died, a ``--max`` target
    has no max, or a verified target lost or duplicated an acknowledged vote."""
    why = [f"{name} died" for name in dead]
    runs: list[dict] = doc["runs"]  # type: ignore[assignment]
    if mode == "max":
        for name in targets:
            run = find_run(runs, name, "max")
            if not (run and run.get("rate")):
                why.append(f"{name} has no passing max rate")
    verify: dict[str, dict] = doc["verify"]  # type: ignore[assignment]
    for name, v in verify.items():
        if "error" in v or v.get("missing") or v.get("duplicates"):
            why.append(f"FAILED exactly-once check for {name}: {v}")
    return why


def find_run(runs: Iterable[dict[str, object]], target: str, mode: str) -> dict[str, object] | None:
    return next((r for r in runs if r["target"] == target and r["mode"] == mode), None)


def _ratio(a: object, b: object) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    if math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


def ratios(runs: Sequence[dict[str, object]], base: str = "gateway") -> dict[str, dict]:
    """``base/other`` for every other target: max throughput and p99 at half the max.

    ``max_rps`` > 1 means the gateway sustains more; ``half_max_p99`` and ``rate_p99`` < 1
    mean the gateway answers faster (at half of each target's own max, resp. at the same
    offered rate); ``max_cpu_target`` and ``rate_cpu_target`` < 1 mean the gateway's own
    process spends less CPU per acknowledged vote.
    """
    out: dict[str, dict] = {}
    others = sorted({str(r["target"]) for r in runs} - {base})
    for other in others:
        entry: dict[str, float | None] = {}
        for mode, field, key in (
            ("max", "rps", "max_rps"),
            ("half-max", "p99_ms", "half_max_p99"),
            ("rate", "rps", "rate_rps"),
            ("rate", "p99_ms", "rate_p99"),
        ):
            mine, theirs = find_run(runs, base, mode), find_run(runs, other, mode)
            if mine and theirs:
                entry[key] = _ratio(mine.get(field), theirs.get(field))
        for mode, key in (("max", "max_cpu_target"), ("rate", "rate_cpu_target")):
            mine, theirs = find_run(runs, base, mode), find_run(runs, other, mode)
            if mine and theirs and mine.get("cpu_us_per_vote") and theirs.get("cpu_us_per_vote"):
                entry[key] = _ratio(
                    mine["cpu_us_per_vote"].get("target"),  # type: ignore[union-attr]
                    theirs["cpu_us_per_vote"].get("target"),  # type: ignore[union-attr]
                )
        if entry:
            out[f"{base}/{other}"] = entry
    return out


def _fmt(v: object, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(doc: dict[str, object]) -> str:
    """The runs, the exactly-once check and the ratios as Markdown (stdout, README)."""
    runs: list[dict[str, object]] = doc["runs"]  # type: ignore[assignment]
    # "passed": how many of the run's repeats met the pass criteria of the search (a max
    # found with short steps does not always hold for longer runs; say so in the table).
    lines = [
        "| target | mode | offered req/s | answered req/s | p50 ms | p90 ms | p99 ms |"
        " p99.9 ms | errors | acked | passed / repeats |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        passed = r.get("passed")
        repeats = (
            f"{sum(passed)} / {len(passed)}" if isinstance(passed, list) else r.get("repeats", "")
        )
        lines.append(
            f"| {r['target']} | {r['mode']} | {_fmt(r['rate'])} | {_fmt(r['rps'], 0)} | "
            f"{_fmt(r['p50_ms'], 2)} | {_fmt(r['p90_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | "
            f"{_fmt(r['p999_ms'], 2)} | {_fmt(r['errors'])} | {_fmt(r['acked'])} | "
            f"{repeats} |"
        )
    verify: dict[str, dict] = doc.get("verify") or {}  # type: ignore[assignment]
    if verify:
        lines += [
            "",
            "| target | acked | stored | missing | duplicates | stored, not acked |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for target, v in verify.items():
            if "error" in v:
                lines.append(f"| {target} | {v['error']} | | | | |")
                continue
            lines.append(
                f"| {target} | {_fmt(v['acked'])} | {_fmt(v['stored'])} | "
                f"{_fmt(v['missing'])} | {_fmt(v['duplicates'])} | "
                f"{_fmt(v['unacked_stored'])} |"
            )
    lines += cpu_markdown(runs)
    rat: dict[str, dict] = doc.get("ratios") or {}  # type: ignore[assignment]
    if rat:
        keys = sorted({k for v in rat.values() for k in v})
        lines += ["", "| ratio | " + " | ".join(keys) + " |", "|---|" + "--:|" * len(keys)]
        for name, v in rat.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(v.get(k), 3) for k in keys) + " |")
    lines += ["", f"command: `{doc.get('command', '')}`"]
    return "\n".join(lines)


def cpu_markdown(runs: Sequence[dict[str, object]]) -> list[str]:
    """The CPU per acknowledged vote of each run, by process group (Markdown lines)."""
    measured = [r for r in runs if r.get("cpu_us_per_vote")]
    if not measured:
        return []
    lines = [
        "",
        "µs of CPU per acknowledged vote (median of the repeats); `busy` is the share of"
        " the target's CPUs it used, `saturation` the rate at which they would be full:",
        "",
        "| target | mode | offered req/s | "
        + " | ".join(cpu.GROUPS)
        + " | all | target CPUs | busy | saturation req/s | answered req/s |",
        "|---|---|--:|" + "--:|" * (len(cpu.GROUPS) + 5),
    ]
    for r in measured:
        per_vote: dict[str, float | None] = r["cpu_us_per_vote"]  # type: ignore[assignment]
        known = [v for v in per_vote.values() if v is not None]
        lines.append(
            f"| {r['target']} | {r['mode']} | {_fmt(r['rate'])} | "
            + " | ".join(_fmt(per_vote.get(g), 0) for g in cpu.GROUPS)
            + f" | {_fmt(sum(known), 0) if known else '—'} | {_fmt(r.get('target_cpus'))} | "
            f"{_fmt(r.get('target_busy'), 2)} | {_fmt(r.get('target_saturation_rps'), 0)} | "
            f"{_fmt(r.get('rps'), 0)} |"
        )
    return lines


def plot(
    path: Path,
    steps: Sequence[dict[str, object]],
    runs: Sequence[dict[str, object]],
    p99_bound_ms: float | None = None,
    title: str = "",
) -> None:
    """Latency percentiles vs offered rate, one panel per target (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(str(s["target"]) for s in steps))
    if not targets:
        return
    cols = 2 if len(targets) > 1 else 1
    rows = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    percentiles = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))
    for ax, target in zip(axes.flat, targets, strict=False):
        mine = sorted(
            (s for s in steps if s["target"] == target and s["mode"] != "warmup"),
            key=lambda s: s["rate"],
        )  # type: ignore[arg-type, return-value]
        for field, label in percentiles:
            xs = [s["rate"] for s in mine if s.get(field) is not None]
            ys = [
                max(float(s[field]), 0.01)
                for s in mine  # type: ignore[arg-type]
                if s.get(field) is not None
            ]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=label)
        best = find_run(runs, target, "max")
        if best and best.get("rate"):
            ax.axvline(
                float(best["rate"]),
                color="grey",
                linestyle=":",  # type: ignore[arg-type]
                label=f"max {best['rate']}/s",
            )
        if p99_bound_ms:
            ax.axhline(
                p99_bound_ms,
                color="red",
                linestyle="--",
                linewidth=0.8,
                label=f"p99 bound {p99_bound_ms:g} ms",
            )
        ax.set_yscale("log")
        ax.set_title(target)
        ax.set_xlabel("offered rate (req/s, open loop)")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        _plot_cpu(ax, mine)
    for ax in list(axes.flat)[len(targets) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cpu(ax: object, steps: Sequence[dict[str, object]]) -> None:
    """µs of CPU per vote against the offered rate, on a second axis of a target's panel:
    the target's own and that of every group together."""
    points = [(s["rate"], s["cpu_us_per_vote"]) for s in steps if s.get("cpu_us_per_vote")]
    if not points:
        return
    cpu_ax = ax.twinx()  # type: ignore[attr-defined]
    xs = [float(rate) for rate, _ in points]  # type: ignore[arg-type]
    mine = [per_vote.get("target") for _, per_vote in points]  # type: ignore[union-attr]
    total = [
        sum(v for v in per_vote.values() if v is not None)  # type: ignore[union-attr]
        for _, per_vote in points
    ]
    cpu_ax.plot(xs, mine, "k^", markersize=4, label="target CPU µs/vote")
    cpu_ax.plot(xs, total, "kx", markersize=4, label="all groups CPU µs/vote")
    cpu_ax.set_ylabel("CPU µs per acknowledged vote")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.legend(fontsize=7, loc="upper right")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _pkg(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else ""


def machine(
    env: dict[str, str], vegeta: Path | None = None, go: str | None = None
) -> dict[str, object]:
    """What the figures depend on: CPU, memory, kernel, versions of everything measured."""
    lscpu = {}
    for line in _run_all(["lscpu"]).splitlines():
        key, _, value = line.partition(":")
        lscpu[key.strip()] = value.strip()
    mem = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    os_name = re.search(r'PRETTY_NAME="([^"]+)"', _read("/etc/os-release"))
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        **{
            p: _pkg(p)
            for p in (
                "granian",
                "uvloop",
                "msgspec",
                "confluent-kafka",
                "fastapi",
                "uvicorn",
                "aiokafka",
                "pydantic",
                "PyJWT",
                "httptools",
                "psycopg",
                "matplotlib",
            )
        },
        "vegeta": VEGETA_VERSION if vegeta else None,
        "nginx": _run(["/usr/sbin/nginx", "-v"]).replace("nginx version: ", ""),
        "go": _run([go, "version"]) if go else None,
    }
    with contextlib.suppress(Exception):
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    gomod = _read(str(Path(__file__).parent / "peers" / "go" / "go.mod"))
    for mod, label in (
        ("github.com/twmb/franz-go", "franz-go"),
        ("github.com/golang-jwt/jwt/v5", "golang-jwt"),
    ):
        m = re.search(re.escape(mod) + r" (v\S+)", gomod)
        versions[label] = m.group(1) if m else None
    stack = Path(env.get("VOTE_STACK_DIR", ""))
    jars = sorted(stack.glob("**/kafka_2.13-*.jar")) if stack.is_dir() else []
    if jars:
        versions["kafka"] = jars[0].name.removeprefix("kafka_").removesuffix(".jar")
    with contextlib.suppress(Exception):
        import psycopg

        with psycopg.connect(env["VOTE_PG_DSN"], connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            versions["postgresql"] = row[0] if row else None
    return {
        "cpu": lscpu.get("Model name"),
        "cpus": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "kernel": platform.release(),
        "os": os_name.group(1) if os_name else platform.platform(),
        "loadavg_at_start": _read("/proc/loadavg").split()[:3],
        "cpu_pressure_at_start": _read("/proc/pressure/cpu").splitlines()[:1],
        "speed": probe.speed(),
        "versions": versions,
    }


def _run_all(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def write_json(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean(doc), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def clean(value: object) -> object:
    """NaN/inf (a step without answers) become null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [clean(v) for v in value]
    return value


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
