"""``python -m processor [run|migrate|verify|rebuild-cache] [--print-config]``."""

from __future__ import annotations

import signal
import sys


def _stop_before_start(_signum: int, _frame: object) -> None:
    # SIGTERM while still importing or connecting: nothing is consumed yet, so leaving
    # at once is a clean stop. processor.members.run replaces this with a graceful one.
    sys.exit(0)


signal.signal(signal.SIGTERM, _stop_before_start)

# The imports below come after the handler on purpose (ruff E402 is off for this file):
# on a busy machine they take seconds, and a SIGTERM then must still exit 0.
import argparse
import json
import logging
import os

import psycopg

from core import jsonlog, keyset
from core.settings import ConfigError, describe, load
from processor.settings import ProcessorSettings

log = logging.getLogger("processor")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m processor", description=__doc__)
    p.add_argument("--print-config", action="store_true", help="print settings and exit")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", help="consume votes.v1 into PostgreSQL (the default)")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    v = sub.add_parser("verify", help="reconcile the topic with PostgreSQL for one election")
    v.add_argument("--election", required=True)
    r = sub.add_parser("rebuild-cache", help="rewrite the Redis tallies from PostgreSQL")
    r.add_argument("--election", help="only this election (default: all)")
    r.add_argument(
        "--force",
        action="store_true",
        help="delete the election's keys first (otherwise newer values in Redis are kept)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load(ProcessorSettings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(describe(settings), indent=2))
        return 0
    jsonlog.setup("processor", settings.processor_log_level)
    command = args.command or "run"
    if command == "migrate":
        from processor.migrate import migrate

        applied = migrate(settings.pg_dsn)
        print(json.dumps({"applied": applied}))
        return 0
    if command == "verify":
        from processor.verify import verify

        report = verify(settings, args.election)
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0 if report["ok"] else 1
    if command == "rebuild-cache":
        from processor.rebuild import rebuild

        print(json.dumps(rebuild(settings, args.election, args.force), sort_keys=True))
        return 0
    from processor.members import run

    try:  # no event keys, no way to tell a gateway's events from forged ones
        keyset.load(settings.event_keys_path)
    except keyset.KeyFileError as exc:
        print(f"processor: event keys: {exc}", file=sys.stderr)
        return 2
    pid_file = settings.processor_pid_file
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        return run(settings)
    except psycopg.OperationalError as exc:
        log.error("cannot reach PostgreSQL", extra={"error": repr(exc)})
        return 1
    finally:
        if pid_file:
            _remove_own_pid_file(pid_file)


def _remove_own_pid_file(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
