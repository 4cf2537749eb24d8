"""bench/targets.py: ``--variant gateway+NAME:VOTE_X=v`` makes a second gateway target
with only those settings changed, its own spill and its own gateway id, so a lever is
measured interleaved with the gateway as it ships and verified exactly-once like it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.targets import TargetConfig, election_for, is_gateway, make_target, parse_variant


def test_a_variant_names_the_settings_it_changes() -> None:
    name, env = parse_variant("gateway+http1:VOTE_GRANIAN_HTTP=1, VOTE_KAFKA_LINGER_MS=5")
    assert name == "gateway+http1"
    assert env == {"VOTE_GRANIAN_HTTP": "1", "VOTE_KAFKA_LINGER_MS": "5"}


@pytest.mark.parametrize(
    "spec",
    [
        "gateway+http1",  # nothing changed
        "gateway+http1:",  # nothing changed
        "http1:VOTE_GRANIAN_HTTP=1",  # not a gateway variant
        "gateway+:VOTE_GRANIAN_HTTP=1",  # no name
        "gateway+a b:VOTE_GRANIAN_HTTP=1",  # a name the report cannot use
        "gateway+é:VOTE_GRANIAN_HTTP=1",  # not in an election id's characters
        "gateway+" + "x" * 21 + ":VOTE_GRANIAN_HTTP=1",  # its election id would not fit
        "gateway+x:GRANIAN_HTTP=1",  # not one of the gateway's settings
        "gateway+x:VOTE_GRANIAN_HTTP",  # no value
    ],
)
def test_a_malformed_variant_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--variant"):
        parse_variant(spec)


def test_a_variant_is_the_gateway_with_its_own_settings_spill_and_id(tmp_path: Path) -> None:
    cfg = TargetConfig(
        env={"VOTE_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "VOTE_STACK_DIR": str(tmp_path)},
        run_dir=tmp_path,
        variants={"gateway+http1": {"VOTE_GRANIAN_HTTP": "1", "VOTE_KAFKA_LINGER_MS": "5"}},
    )
    shipped = make_target("gateway", "e1", cfg)
    variant = make_target("gateway+http1", "e2", cfg)

    assert variant.service.argv == shipped.service.argv
    assert variant.produces and variant.fresh_votes
    assert variant.service.env["VOTE_GRANIAN_HTTP"] == "1"
    assert "VOTE_GRANIAN_HTTP" not in shipped.service.env
    # The variant's settings win over the harness's own (here the linger).
    assert shipped.service.env["VOTE_KAFKA_LINGER_MS"] == "2"
    assert variant.service.env["VOTE_KAFKA_LINGER_MS"] == "5"
    assert variant.service.env["VOTE_SPILL_DIR"] != shipped.service.env["VOTE_SPILL_DIR"]
    assert variant.service.env["VOTE_GATEWAY_ID"] != shipped.service.env["VOTE_GATEWAY_ID"]
    assert is_gateway("gateway+http1") and is_gateway("gateway") and not is_gateway("go-peer")


def test_a_variant_no_flag_defines_is_not_started(tmp_path: Path) -> None:
    cfg = TargetConfig(env={"VOTE_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}, run_dir=tmp_path)
    with pytest.raises(ValueError, match="no --variant defines it"):
        make_target("gateway+http1", "e1", cfg)


def test_a_variants_election_id_passes_the_schemas_check() -> None:
    name, _env = parse_variant("gateway+" + "x" * 20 + ":VOTE_GRANIAN_HTTP=1")
    election = election_for("bench-20261202-104318-6f59", name)
    # processor/migrations/001_initial.sql: CHECK (election_id ~ '^[A-Za-z0-9._-]{1,64}$')
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", election), election
