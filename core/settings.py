"""Typed configuration read from ``VOTE_*`` environment variables.

Each service declares one ``msgspec.Struct`` of settings with defaults that suit the
local stack (``deploy/local/stack env``). ``load`` reads ``VOTE_<FIELD>`` for every
field, converts it to the field's type and validates it once at start, so a typo in
the environment stops the service with a clear message instead of failing later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import urlsplit

import msgspec

PREFIX = "VOTE_"
_ADDRESS_HINTS = ("dsn", "url")  # may carry a password somewhere inside
_SECRET_HINTS = ("password", "secret", "key")  # are a secret, unless a path
_PATH_SUFFIXES = ("_file", "_dir", "_path", "_location")
# A password in a URL query (…?password=x) or a libpq keyword string (password='x y').
_QUERY_PASSWORD = re.compile(r"((?:^|&)[^=&]*pass(?:word|wd)?=)[^&]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"(\b\w*pass(?:word|wd)?\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """Raised when an environment variable cannot be turned into its setting."""


def variable(field_name: str) -> str:
    """The environment variable of a setting: ``VOTE_`` and the field's name in capitals."""
    return PREFIX + field_name.upper()


def variables(cls: type[msgspec.Struct]) -> frozenset[str]:
    """Every environment variable ``load`` reads for ``cls``."""
    return frozenset(variable(f.name) for f in msgspec.structs.fields(cls))


def load(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from ``VOTE_*`` variables, falling back to the field defaults."""
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        value = env.get(variable(field.name))
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
        if isinstance(value, str) and value:
            if any(h in name for h in _ADDRESS_HINTS):
                value = mask_address(value)
            elif any(h in name for h in _SECRET_HINTS) and not name.endswith(_PATH_SUFFIXES):
                value = "***"
        shown[variable(name)] = value
    return shown


def mask_address(value: str) -> str:
    """A DSN or URL with its credentials hidden wherever they are: the user info of a
    URL, a ``password`` in its query, a ``password=`` of a libpq keyword string. The
    host, port and database stay readable."""
    if "://" in value:
        parts = urlsplit(value)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        masked = f"{parts.scheme}://{netloc}{parts.path}"
        if parts.query:
            masked += "?" + _QUERY_PASSWORD.sub(r"\1***", parts.query)
        return masked
    if "=" in value:
        return _KEYWORD_PASSWORD.sub(r"\1***", value)
    return value
