"""How every Kafka client of the platform authenticates: TLS and SASL from ``VOTE_KAFKA_*``.

The gateway's producer, the processor's consumer and dead-letter producer, ``processor
verify`` and the bench's clients all connect to the same cluster, so they read one set of
settings: ``KafkaSecurity`` is a base of both services' settings structs, and
``client_config`` turns it into librdkafka properties. Without any of them set, clients
speak PLAINTEXT as before (the local stack). What an operator must configure is in
docs/ARCHITECTURE.md, "Trust boundaries".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from core import settings as _settings

PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
# The mechanisms that authenticate with a username and password. (OAUTHBEARER and GSSAPI
# need a token endpoint or a keytab: not configurable here.)
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurity(msgspec.Struct, kw_only=True):
    """The ``VOTE_KAFKA_*`` security settings; librdkafka's property in each comment."""

    kafka_security_protocol: str = "plaintext"  # security.protocol
    kafka_sasl_mechanism: str = ""  # sasl.mechanism
    kafka_sasl_username: str = ""  # sasl.username
    # sasl.password, given as the value or as a file that holds it (a mounted Secret).
    # --print-config masks the value.
    kafka_sasl_password: str = ""
    kafka_sasl_password_file: str = ""
    kafka_ssl_ca_location: str = ""  # ssl.ca.location: CA bundle that signed the brokers
    kafka_ssl_certificate_location: str = ""  # ssl.certificate.location (mutual TLS)
    kafka_ssl_key_location: str = ""  # ssl.key.location (mutual TLS)
    kafka_ssl_key_password: str = ""  # ssl.key.password, if the key file is encrypted
    # ssl.endpoint.identification.algorithm https (true) or none: check that the broker's
    # certificate names the host the client connected to.
    kafka_ssl_verify_hostname: bool = True

    def __post_init__(self) -> None:
        protocol = self.kafka_security_protocol.lower()
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"VOTE_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, "
                f"not {self.kafka_security_protocol!r}"
            )
        sasl = {
            "VOTE_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "VOTE_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "VOTE_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
            "VOTE_KAFKA_SASL_PASSWORD_FILE": self.kafka_sasl_password_file,
        }
        ssl = {
            "VOTE_KAFKA_SSL_CA_LOCATION": self.kafka_ssl_ca_location,
            "VOTE_KAFKA_SSL_CERTIFICATE_LOCATION": self.kafka_ssl_certificate_location,
            "VOTE_KAFKA_SSL_KEY_LOCATION": self.kafka_ssl_key_location,
            "VOTE_KAFKA_SSL_KEY_PASSWORD": self.kafka_ssl_key_password,
        }
        if protocol.startswith("sasl_"):
            if self.kafka_sasl_mechanism.upper() not in MECHANISMS:
                raise ValueError(
                    f"VOTE_KAFKA_SECURITY_PROTOCOL={protocol} needs VOTE_KAFKA_SASL_MECHANISM, "
                    f"one of {', '.join(MECHANISMS)} (not {self.kafka_sasl_mechanism!r})"
                )
            if not self.kafka_sasl_username:
                raise ValueError(
                    f"VOTE_KAFKA_SECURITY_PROTOCOL={protocol} needs VOTE_KAFKA_SASL_USERNAME"
                )
            if bool(self.kafka_sasl_password) == bool(self.kafka_sasl_password_file):
                raise ValueError(
                    f"VOTE_KAFKA_SECURITY_PROTOCOL={protocol} needs exactly one of "
                    "VOTE_KAFKA_SASL_PASSWORD and VOTE_KAFKA_SASL_PASSWORD_FILE"
                )
            if self.kafka_sasl_password_file:
                _read_secret(self.kafka_sasl_password_file)  # fail at start, not at connect
        else:
            _refuse_unused(sasl, protocol, "SASL")
        if protocol in ("ssl", "sasl_ssl"):
            if bool(self.kafka_ssl_certificate_location) != bool(self.kafka_ssl_key_location):
                raise ValueError(
                    "mutual TLS needs both VOTE_KAFKA_SSL_CERTIFICATE_LOCATION and "
                    "VOTE_KAFKA_SSL_KEY_LOCATION"
                )
            for name in list(ssl)[:3]:
                path = ssl[name]
                if path and not os.access(path, os.R_OK):
                    raise ValueError(f"{name}: {path} is not a readable file")
        else:
            _refuse_unused(ssl, protocol, "TLS")

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka properties for this security setup, to merge into a client's config.

        The password file is read here, so a client created after a rotation of the
        mounted Secret uses the new password.
        """
        protocol = self.kafka_security_protocol.lower()
        conf = {"security.protocol": protocol}
        if protocol.startswith("sasl_"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism.upper()
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password or _read_secret(
                self.kafka_sasl_password_file
            )
        if protocol in ("ssl", "sasl_ssl"):
            optional = {
                "ssl.ca.location": self.kafka_ssl_ca_location,
                "ssl.certificate.location": self.kafka_ssl_certificate_location,
                "ssl.key.location": self.kafka_ssl_key_location,
                "ssl.key.password": self.kafka_ssl_key_password,
            }
            conf.update({k: v for k, v in optional.items() if v})
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.kafka_ssl_verify_hostname else "none"
            )
        return conf


def client_config(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The librdkafka security properties the ``VOTE_KAFKA_*`` variables describe.

    For tools that build Kafka clients without a service's settings (the bench, tests).
    """
    return _settings.load(KafkaSecurity, environ).kafka_client_config()


def _refuse_unused(given: dict[str, str], protocol: str, what: str) -> None:
    # A certificate or password that is silently ignored would leave the operator
    # believing the connection is protected.
    unused = [name for name, value in given.items() if value]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} set, but VOTE_KAFKA_SECURITY_PROTOCOL={protocol} "
            f"does not use {what}"
        )


def _read_secret(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ValueError(f"VOTE_KAFKA_SASL_PASSWORD_FILE: cannot read {path}: {exc}") from exc
    if not value:
        raise ValueError(f"VOTE_KAFKA_SASL_PASSWORD_FILE: {path} is empty")
    return value
