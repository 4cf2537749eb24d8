"""Issue 15 item 8: the client behind a trusted proxy, and IPv6 per /64 (unit level; the
gateway's own answer is in test_edges_integration.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.clients import ClientResolver, forwarded_for, limit_key


@dataclass
class Headers:
    lines: dict[str, list[str]] = field(default_factory=dict)

    def get_all(self, name: str) -> list[str]:
        return self.lines.get(name, [])


@dataclass
class Scope:
    client: str
    headers: Headers = field(default_factory=Headers)


def scope(client: str, **lines: str | list[str]) -> Scope:
    return Scope(
        client,
        Headers(
            {
                name.replace("_", "-"): [value] if isinstance(value, str) else value
                for name, value in lines.items()
            }
        ),
    )


def test_ipv6_clients_share_a_budget_per_64() -> None:
    assert limit_key("2001:db8:1:2::1") == limit_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert limit_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")


def test_ipv4_and_ipv4_mapped_are_one_address() -> None:
    assert limit_key("192.0.2.7") == "192.0.2.7"
    assert limit_key("::ffff:192.0.2.7") == "192.0.2.7"


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("192.0.2.7:5123", "192.0.2.7"),
        ("[::ffff:192.0.2.7]:5123", "192.0.2.7"),
        ("[2001:db8::5]:443", "2001:db8::/64"),
    ],
)
def test_without_trusted_proxies_the_peer_is_the_client(client: str, key: str) -> None:
    resolver = ClientResolver()
    assert resolver.key(scope(client, x_forwarded_for="203.0.113.9")) == key


def test_forwarding_headers_from_an_untrusted_peer_are_ignored() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    spoofed = scope("192.0.2.7:1", x_forwarded_for="203.0.113.9", forwarded="for=203.0.113.9")
    assert resolver.key(spoofed) == "192.0.2.7"


def test_x_forwarded_for_names_the_client_of_a_trusted_proxy() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    # The client sent a spoofed first hop; the ingress appended the real peer.
    request = scope("10.1.2.3:1", x_forwarded_for=["6.6.6.6, 203.0.113.9", "10.9.9.9"])
    assert resolver.key(request) == "203.0.113.9"


def test_forwarded_wins_over_x_forwarded_for_and_is_parsed_per_rfc_7239() -> None:
    resolver = ClientResolver(["10.0.0.0/8", "2001:db8:ffff::/48"])
    request = scope(
        "[2001:db8:ffff::1]:1",
        forwarded='for=6.6.6.6;proto=https, For="[2001:db8:cafe::17]:4711";by=x, for=10.0.0.2',
        x_forwarded_for="198.51.100.1",
    )
    assert resolver.key(request) == "2001:db8:cafe::/64"


def test_an_unknown_hop_stops_the_walk_at_the_nearest_proxy() -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    assert resolver.key(scope("10.1.2.3:1", forwarded="for=6.6.6.6, for=unknown")) == "10.1.2.3"
    assert resolver.key(scope("10.1.2.3:1", x_forwarded_for="garbage")) == "10.1.2.3"
    assert resolver.key(scope("10.1.2.3:1")) == "10.1.2.3"


def test_forwarded_for_handles_quotes_and_missing_for() -> None:
    assert forwarded_for(['for="_hidden";proto=http, by=1.2.3.4', 'for="a,b"']) == [
        "_hidden",
        "",
        "a,b",
    ]
