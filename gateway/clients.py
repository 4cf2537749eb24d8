"""Who the client is, for per-client limits: the peer address, or the address a trusted
reverse proxy says it forwarded for; IPv6 clients counted per /64.

Behind an ingress every request comes from the ingress's address, so the per-address
budget would be shared by every voter. The operator lists the proxies it trusts
(``VOTE_TRUSTED_PROXIES``, CIDRs); for a request from one of them the client is the
nearest address in ``Forwarded`` (RFC 7239) or, without it, ``X-Forwarded-For`` that is
not itself a trusted proxy. A request from any other peer is taken at its peer address,
whatever headers it sends, so a client cannot choose its own budget.

An IPv6 host gets a /64 from its provider and can use every address in it, so counting
per /128 would give it 2^64 budgets; it is counted per /64 instead.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=65536)
def limit_key(host: str) -> str:
    """The rate-limit key of an address: IPv4 as is, IPv6 as its /64, an IPv4-mapped IPv6
    address as the IPv4 address; anything unparsable as given."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return str(network)


def _parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a forwarding header: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``,
    ``[::1]:80``, ``::1``; None for ``unknown``, obfuscated ids and garbage."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` values of ``Forwarded`` header lines, nearest proxy's last.

    An element without ``for=`` contributes an empty string, so it still counts as a hop.
    """
    hops: list[str] = []
    for value in values:
        for element in _split_quoted(value, ","):
            found = ""
            for pair in _split_quoted(element, ";"):
                name, _, val = pair.partition("=")
                if name.strip().lower() == "for":
                    val = val.strip()
                    if len(val) >= 2 and val[0] == val[-1] == '"':
                        val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                    found = val
            hops.append(found)
    return hops


def _split_quoted(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double quotes (RFC 7230 quoted-string)."""
    if '"' not in text:
        return text.split(sep)
    parts, start, quoted, escaped = [], 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


class ClientResolver:
    """``key(scope)``: the rate-limit key of a request's client.

    ``trusted_proxies``: CIDRs (or addresses) of the reverse proxies whose forwarding
    headers are believed. Empty: the peer address is the client.
    """

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.trusted: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(cidr.strip(), strict=False)
            for cidr in trusted_proxies
            if cidr.strip()
        )
        self._is_trusted = functools.lru_cache(maxsize=4096)(self._trusted_uncached)

    def key(self, scope: Any) -> str:
        client = scope.client
        host = client.rpartition(":")[0] or client
        if host[:1] == "[":
            host = host[1:-1]
        if self.trusted and self._is_trusted(host):
            forwarded = self._forwarded_client(scope.headers)
            if forwarded is not None:
                host = forwarded
        # Most clients are IPv4: their key is the address, no parsing needed.
        return limit_key(host) if ":" in host else host

    def _trusted_uncached(self, host: str) -> bool:
        address = _parse_address(host)
        return address is not None and self._address_trusted(address)

    def _address_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)

    def _forwarded_client(self, headers: Any) -> str | None:
        """The nearest untrusted hop the trusted proxies name; None when they name none
        (the nearest proxy is then the client)."""
        lines = headers.get_all("forwarded")
        if lines:
            hops = forwarded_for(lines)
        else:
            hops = [hop for line in headers.get_all("x-forwarded-for") for hop in line.split(",")]
        for hop in reversed(hops):
            address = _parse_address(hop)
            if address is None:
                # "unknown", an obfuscated id or garbage: nothing further left is
                # vouched for by a proxy we trust.
                return None
            if not self._address_trusted(address):
                return str(address)
        return None
