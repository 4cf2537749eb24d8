"""Settings from VOTE_* environment variables."""

import pytest

from core.settings import ConfigError, describe, load, variables
from gateway.config import GatewaySettings


def test_defaults_fit_the_local_stack():
    s = load(GatewaySettings, {})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.http_port == 8080
    assert s.jwks_file.endswith("keys/jwks.json")
    assert s.spill_deadline_ms == 50.0


def test_environment_overrides_and_converts():
    s = load(
        GatewaySettings,
        {
            "VOTE_HTTP_PORT": "9999",
            "VOTE_WORKERS": "3",
            "VOTE_SPILL_DEADLINE_MS": "12.5",
            "VOTE_STACK_DIR": "/x",
        },
    )
    assert (s.http_port, s.workers, s.spill_deadline_ms) == (9999, 3, 12.5)
    assert s.spill_dir == "/x/spill"


@pytest.mark.parametrize("env", [{"VOTE_HTTP_PORT": "eighty"}, {"VOTE_WORKERS": "1.5"}])
def test_bad_values_fail_at_start(env):
    with pytest.raises(ConfigError):
        load(GatewaySettings, env)


@pytest.mark.parametrize(
    "name", ["VOTE_WORKERS", "VOTE_GC_YOUNG_THRESHOLD", "VOTE_KAFKA_COMPRESSION"]
)
def test_invalid_combination_fails(name: str):
    with pytest.raises(ValueError, match=name):
        load(GatewaySettings, {name: "0"})


def test_print_config_masks_credentials():
    s = load(GatewaySettings, {"VOTE_PG_DSN": "postgresql://vote:secret@db:5432/vote"})
    shown = describe(s)
    assert shown["VOTE_PG_DSN"] == "postgresql://***@db:5432/vote"
    assert "secret" not in repr(shown)


def test_processor_lookup_threshold():
    from processor.lookup import LOOKUP_THRESHOLD
    from processor.settings import ProcessorSettings

    # The setting's default is the one Store uses on its own (documented there).
    assert load(ProcessorSettings, {}).processor_lookup_threshold == LOOKUP_THRESHOLD
    env = {"VOTE_PROCESSOR_LOOKUP_THRESHOLD": "0"}  # 0: every batch staged
    assert load(ProcessorSettings, env).processor_lookup_threshold == 0
    with pytest.raises(ConfigError):
        load(ProcessorSettings, {"VOTE_PROCESSOR_LOOKUP_THRESHOLD": "-1"})


def test_processor_lookup():
    from processor.settings import ProcessorSettings

    assert load(ProcessorSettings, {}).processor_lookup == "state"
    env = {"VOTE_PROCESSOR_LOOKUP": "postgres", "VOTE_PROCESSOR_STATE_DIR": "/var/tmp"}
    s = load(ProcessorSettings, env)
    assert (s.processor_lookup, s.processor_state_dir) == ("postgres", "/var/tmp")
    with pytest.raises(ConfigError):
        load(ProcessorSettings, {"VOTE_PROCESSOR_LOOKUP": "rocksdb"})


def test_one_variable_moves_the_gateway_and_the_processor_to_another_topic():
    from processor.settings import ProcessorSettings

    assert load(ProcessorSettings, {}).vote_topic == load(GatewaySettings, {}).topic
    env = {"VOTE_TOPIC": "votes.test"}
    assert load(ProcessorSettings, env).vote_topic == load(GatewaySettings, env).topic
    assert load(ProcessorSettings, env).vote_topic == "votes.test"
    # The processor's own variable still wins, for the processor alone.
    env["VOTE_PROCESSOR_TOPIC"] = "votes.other"
    assert load(ProcessorSettings, env).vote_topic == "votes.other"
    assert load(GatewaySettings, env).topic == "votes.test"


def test_variables_are_the_names_load_reads():
    names = variables(GatewaySettings)
    assert {"VOTE_HTTP_PORT", "VOTE_KAFKA_LINGER_MS", "VOTE_GRANIAN_HTTP"} <= names
    assert len(names) == len(GatewaySettings.__struct_fields__)
    # Each one reaches its field: load picks every name up.
    assert load(GatewaySettings, {"VOTE_HTTP_PORT": "8081"}).http_port == 8081
    assert set(describe(load(GatewaySettings, {}))) == names
