"""``python -m bench <command> ...``: dispatch to the bench subcommands.

corpus    pre-sign N votes into a vegeta targets file        (bench/corpus.py)
gateway   open-loop load on the gateway and its peers        (bench/run.py)
fastpath  micro-benchmarks of gateway._fast                  (bench/fastpath.py)
processor drain N preloaded events vs a plain binary COPY     (bench/processor.py)
batchcost PostgreSQL CPU of one small / large batch, by phase  (bench/batchcost.py)
capacity  cores, storage, Kafka for a target rate, from measured costs (bench/capacity.py)
locust    a Locust master and N workers replaying a corpus, then exactly-once (bench/locust_run.py)
chaos     faults under load on a 3-node cluster, checked     (bench/chaos/)
failover  lose region A under load: RTO, RPO, exactly-once    (bench/failover.py)
"""

from __future__ import annotations

import sys

COMMANDS = {
    "corpus": "bench.corpus",
    "gateway": "bench.run",
    "fastpath": "bench.fastpath",
    "processor": "bench.processor",
    "batchcost": "bench.batchcost",
    "capacity": "bench.capacity",
    "locust": "bench.locust_run",
    "chaos": "bench.chaos.runner",
    "failover": "bench.failover",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
