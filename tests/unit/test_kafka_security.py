"""Kafka TLS/SASL settings: VOTE_KAFKA_* to librdkafka properties, for both services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.kafka_security import client_config
from core.settings import ConfigError, describe, load
from gateway.config import GatewaySettings
from processor.settings import ProcessorSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [GatewaySettings, ProcessorSettings]
SCRAM = {
    "VOTE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "VOTE_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "VOTE_KAFKA_SASL_USERNAME": "vote-gateway",
    "VOTE_KAFKA_SASL_PASSWORD": "s3cret-Pa55",
}


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_plaintext_by_default(cls):
    assert load(cls, {}).kafka_client_config() == {"security.protocol": "plaintext"}


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_sasl_over_tls_reaches_the_client_config(cls, tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**SCRAM, "VOTE_KAFKA_SSL_CA_LOCATION": str(ca)}
    assert load(cls, env).kafka_client_config() == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "vote-gateway",
        "sasl.password": "s3cret-Pa55",
        "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
    }


def test_mutual_tls_without_sasl(tmp_path: Path):
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("pem")
    env = {
        "VOTE_KAFKA_SECURITY_PROTOCOL": "ssl",
        "VOTE_KAFKA_SSL_CA_LOCATION": str(files["ca"]),
        "VOTE_KAFKA_SSL_CERTIFICATE_LOCATION": str(files["cert"]),
        "VOTE_KAFKA_SSL_KEY_LOCATION": str(files["key"]),
        "VOTE_KAFKA_SSL_KEY_PASSWORD": "keypass",
        "VOTE_KAFKA_SSL_VERIFY_HOSTNAME": "false",
    }
    conf = client_config(env)
    assert conf == {
        "security.protocol": "ssl",
        "ssl.ca.location": str(files["ca"]),
        "ssl.certificate.location": str(files["cert"]),
        "ssl.key.location": str(files["key"]),
        "ssl.key.password": "keypass",
        "ssl.endpoint.identification.algorithm": "none",
    }
    assert not any(k.startswith("sasl.") for k in conf)


def test_password_from_a_file_is_read_when_a_client_is_made(tmp_path: Path):
    secret = tmp_path / "kafka-password"
    secret.write_text("first\n")
    env = {**SCRAM, "VOTE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"}
    del env["VOTE_KAFKA_SASL_PASSWORD"]
    env["VOTE_KAFKA_SASL_PASSWORD_FILE"] = str(secret)
    settings = load(ProcessorSettings, env)
    assert settings.kafka_client_config()["sasl.password"] == "first"
    secret.write_text("rotated")  # a Secret mounted as a file is updated in place
    assert settings.kafka_client_config()["sasl.password"] == "rotated"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOTE_KAFKA_SECURITY_PROTOCOL": "tls"}, "must be one of plaintext, ssl"),
        (
            {**SCRAM, "VOTE_KAFKA_SASL_MECHANISM": "GSSAPI"},
            "needs VOTE_KAFKA_SASL_MECHANISM, one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        ({**SCRAM, "VOTE_KAFKA_SASL_USERNAME": ""}, "needs VOTE_KAFKA_SASL_USERNAME"),
        ({**SCRAM, "VOTE_KAFKA_SASL_PASSWORD": ""}, "needs exactly one of"),
        (
            {**SCRAM, "VOTE_KAFKA_SASL_PASSWORD_FILE": "/etc/hostname"},
            "needs exactly one of",
        ),
        (
            {**SCRAM, "VOTE_KAFKA_SASL_PASSWORD": "", "VOTE_KAFKA_SASL_PASSWORD_FILE": "/nope"},
            "cannot read /nope",
        ),
        # Credentials or certificates that the protocol would silently ignore.
        (
            {"VOTE_KAFKA_SASL_USERNAME": "u", "VOTE_KAFKA_SASL_PASSWORD": "p"},
            "VOTE_KAFKA_SASL_USERNAME, VOTE_KAFKA_SASL_PASSWORD set, but "
            "VOTE_KAFKA_SECURITY_PROTOCOL=plaintext does not use SASL",
        ),
        (
            {**SCRAM, "VOTE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"}
            | {"VOTE_KAFKA_SSL_CA_LOCATION": "/etc/ssl/certs/ca-certificates.crt"},
            "sasl_plaintext does not use TLS",
        ),
        (
            {
                "VOTE_KAFKA_SECURITY_PROTOCOL": "ssl",
                "VOTE_KAFKA_SSL_CERTIFICATE_LOCATION": "/etc/hostname",
            },
            "needs both VOTE_KAFKA_SSL_CERTIFICATE_LOCATION and VOTE_KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {"VOTE_KAFKA_SECURITY_PROTOCOL": "ssl", "VOTE_KAFKA_SSL_CA_LOCATION": "/no/ca.pem"},
            "VOTE_KAFKA_SSL_CA_LOCATION: /no/ca.pem is not a readable file",
        ),
    ],
)
@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_a_wrong_setup_stops_the_service_at_start(cls, env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match="invalid configuration") as caught:
        load(cls, env)
    assert message in str(caught.value)


@pytest.mark.parametrize("cls", SERVICES, ids=lambda c: c.__name__)
def test_print_config_masks_the_kafka_passwords(cls):
    shown = describe(load(cls, {**SCRAM, "VOTE_KAFKA_SSL_KEY_PASSWORD": "k3y-Pa55"}))
    assert shown["VOTE_KAFKA_SASL_PASSWORD"] == "***"
    assert shown["VOTE_KAFKA_SSL_KEY_PASSWORD"] == "***"
    assert shown["VOTE_KAFKA_SASL_USERNAME"] == "vote-gateway"
    assert "s3cret" not in repr(shown) and "k3y" not in repr(shown)


@pytest.mark.parametrize("service", ["gateway", "processor"])
def test_print_config_of_the_service_hides_the_password(service: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOTE_")}
    env |= {**SCRAM, "VOTE_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"}
    done = subprocess.run(
        [sys.executable, "-m", service, "--print-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    shown = json.loads(done.stdout)
    assert shown["VOTE_KAFKA_SECURITY_PROTOCOL"] == "sasl_plaintext"
    assert shown["VOTE_KAFKA_SASL_PASSWORD"] == "***"
