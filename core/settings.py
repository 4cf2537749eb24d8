"""Typed configuration read from ``VOTE_*`` environment variables.

Each service declares one ``msgspec.Struct`` of settings with defaults that suit the
local stack (``deploy/local/stack env``). ``load`` reads ``VOTE_<FIELD>`` for every
field, converts it to the field's type and validates it once at start, so a typo in
the environment stops the service with a clear message instead of failing later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import msgspec

PREFIX = "VOTE_"
_SECRET_HINTS = ("dsn", "password", "secret", "key", "url")

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """Raised when an environment variable cannot be turned into its setting."""


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from ``VOTE_*`` variables, falling back to the field defaults."""
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        value = env.get(PREFIX + field.name.upper())
        if value is not None:
            raw[field.name] = value
    try:
        # strict=False lets msgspec turn "8080" into 8080 and "true" into True.
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc} (from {PREFIX}* environment)") from exc


def describe(settings: msgspec.Struct) -> dict[str, object]:
    """The settings as a dict with secrets masked, for ``--print-config`` and logs."""
    shown: dict[str, object] = {}
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        if any(h in name for h in _SECRET_HINTS) and isinstance(value, str) and value:
            value = _mask(value)
        shown[PREFIX + name.upper()] = value
    return shown


def _mask(value: str) -> str:
    # Keep the scheme/host of URLs readable; hide credentials.
    if "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    if "://" in value or "/" in value:
        return value  # a path or credential-free URL is not a secret
    return "***"
