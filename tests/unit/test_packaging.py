"""What the installed services need, and what the production image holds."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Used only by tests, bench and `gateway.admin mint|token`: extras, not runtime deps.
NOT_RUNTIME = ("pyjwt", "msgpack")


def _project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0].lower()


def test_pyjwt_and_msgpack_are_not_runtime_dependencies() -> None:
    project = _project()
    runtime = {_name(r) for r in project["dependencies"]}
    assert runtime.isdisjoint(NOT_RUNTIME)
    assert "pyjwt" in {_name(r) for r in project["optional-dependencies"]["admin"]}


def test_the_services_import_without_the_extras() -> None:
    # None in sys.modules makes an import raise ImportError, as if it were not installed.
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in ("jwt", "msgpack", "bench"))
    modules = (
        "gateway.app",
        "gateway.__main__",
        "gateway.admin",
        "processor.__main__",
        "processor.members",
        "processor.migrate",
        "processor.verify",
        "processor.rebuild",
    )
    code = f"import sys; {blocked}; " + "; ".join(f"import {m}" for m in modules)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_image_copies_neither_bench_nor_tests() -> None:
    sources = [
        source
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]  # the last word is the destination
    ]
    assert "gateway" in sources, "the Dockerfile's COPY lines were not understood"
    for source in sources:
        assert source.split("/")[0] not in ("bench", "tests", "."), source
