"""routing.egress: the egress tier's decisions, refused by default and each with its reason."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing import egress
from routing.egress import DEFAULT_DENY_DESTINATIONS, EgressPolicy, normalised, parse_network


def policy(sources: tuple[str, ...] = ("203.0.113.10", "203.0.113.11", "2001:db8::10"),
           ports: tuple[int, ...] = (25,), clients: tuple[str, ...] = ("10.0.0.0/8",),
           deny: tuple[str, ...] = DEFAULT_DENY_DESTINATIONS) -> EgressPolicy:
    return EgressPolicy.build(sources, ports, clients, deny)


def test_clients_inside_allow_clients_only() -> None:
    rules = policy(clients=("10.0.0.0/8", "fd00::/8"))
    assert rules.client_allowed("10.1.2.3")
    assert rules.client_allowed("fd00::1")
    assert not rules.client_allowed("192.168.1.1")
    assert not rules.client_allowed("2001:db8::1")
    assert not rules.client_allowed("not an address")
    # The mapped form of an allowed IPv4 client is that client.
    assert rules.client_allowed("::ffff:10.9.9.9")


def test_no_allow_clients_allows_nobody() -> None:
    assert not policy(clients=()).client_allowed("10.0.0.1")


def test_the_requested_source_must_be_configured() -> None:
    rules = policy()
    assert rules.source_for("203.0.113.11") == egress.SourceChoice("203.0.113.11")
    assert rules.source_for("203.0.113.12").refusal == egress.SOURCE_NOT_ALLOWED
    assert rules.source_for("2001:db8:0::10").address == "2001:db8::10"  # as text differs
    assert rules.source_for("mx.example").refusal == egress.NOT_AN_ADDRESS


def test_the_default_source_is_the_first_of_the_destinations_family() -> None:
    rules = policy()
    assert rules.source_for(None, 4).address == "203.0.113.10"
    assert rules.source_for(None, 6).address == "2001:db8::10"
    assert policy(sources=("203.0.113.10",)).source_for(None, 6).refusal == \
        egress.NO_SOURCE_FOR_FAMILY


def test_a_requested_source_of_the_other_family_is_refused() -> None:
    assert policy().source_for("203.0.113.10", 6).refusal == egress.NO_SOURCE_FOR_FAMILY


@pytest.mark.parametrize(("host", "port", "reason"), [
    ("198.51.100.7", 25, None),
    ("2001:db8:1::25", 25, None),
    ("198.51.100.7", 587, egress.PORT_NOT_ALLOWED),
    ("127.0.0.1", 25, egress.DESTINATION_DENIED),
    ("::1", 25, egress.DESTINATION_DENIED),
    ("169.254.169.254", 25, egress.DESTINATION_DENIED),  # cloud metadata
    ("fe80::1", 25, egress.DESTINATION_DENIED),
    ("10.96.0.10", 25, egress.DESTINATION_DENIED),  # a cluster's service range
    ("172.16.5.5", 25, egress.DESTINATION_DENIED),
    ("192.168.0.1", 25, egress.DESTINATION_DENIED),
    ("100.64.1.1", 25, egress.DESTINATION_DENIED),
    ("fd12::1", 25, egress.DESTINATION_DENIED),
    ("0.0.0.0", 25, egress.DESTINATION_DENIED),
    ("::", 25, egress.DESTINATION_DENIED),
    ("224.0.0.1", 25, egress.DESTINATION_DENIED),
    ("255.255.255.255", 25, egress.DESTINATION_DENIED),
    ("ff02::1", 25, egress.DESTINATION_DENIED),
    ("::ffff:127.0.0.1", 25, egress.DESTINATION_DENIED),  # mapped: still loopback
    ("::ffff:10.1.1.1", 25, egress.DESTINATION_DENIED),
    ("mx.example.net", 25, egress.NOT_AN_ADDRESS),
])
def test_destinations(host: str, port: int, reason: str | None) -> None:
    assert policy().destination_refusal(host, port) == reason


def test_the_allow_clients_ranges_are_denied_whatever_the_deny_list() -> None:
    rules = policy(clients=("198.51.100.0/24",), deny=())
    assert rules.destination_refusal("198.51.100.7", 25) == egress.DESTINATION_DENIED
    assert rules.destination_refusal("127.0.0.1", 25) is None  # the operator took it off


def test_unspecified_and_multicast_are_denied_even_with_an_empty_deny_list() -> None:
    rules = policy(clients=(), deny=())
    for host in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255"):
        assert rules.destination_refusal(host, 25) == egress.DESTINATION_DENIED


def test_parse_network_says_what_is_wrong() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert parse_network("192.0.2.1") == ipaddress.ip_network("192.0.2.1/32")
    with pytest.raises(ValueError, match=r"host bits set; the network is 10\.0\.0\.0/8"):
        parse_network("10.0.0.1/8")
    with pytest.raises(ValueError, match="not a network in CIDR form"):
        parse_network("10.0.0.0/33")


def test_build_refuses_a_source_that_is_not_an_address() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        policy(sources=("egress.example",))


@given(st.ip_addresses(v=4))
def test_a_mapped_address_is_judged_as_the_ipv4_one(address: ipaddress.IPv4Address) -> None:
    rules = policy()
    mapped = f"::ffff:{address}"
    assert normalised(mapped) == address
    assert rules.destination_refusal(mapped, 25) == rules.destination_refusal(str(address), 25)
    assert rules.client_allowed(mapped) == rules.client_allowed(str(address))


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_a_destination_in_a_deny_range_is_never_allowed(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    rules = policy(ports=(port,))
    denied = any(address.version == network.version and address in network
                 for network in rules.deny_destinations)
    if denied:
        assert rules.destination_refusal(str(address), port) == egress.DESTINATION_DENIED


@given(st.text(max_size=40))
def test_any_text_gets_an_answer(text: str) -> None:
    rules = policy()
    assert rules.destination_refusal(text, 25) in (None, *egress.REASONS)
    assert isinstance(rules.client_allowed(text), bool)
    choice = rules.source_for(text)
    assert (choice.address is None) != (choice.refusal is None)


@given(st.ip_addresses(), st.sampled_from([25, 587]))
def test_the_numeric_checks_agree_with_ipaddress(
        address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    rules = policy()
    judged = address
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        judged = address.ipv4_mapped
    expected: str | None = None
    if port != 25:
        expected = egress.PORT_NOT_ALLOWED
    elif (judged.is_unspecified or judged.is_multicast
          or judged == ipaddress.IPv4Address("255.255.255.255")
          or any(judged.version == network.version and judged in network
                 for network in rules.deny_destinations)):
        expected = egress.DESTINATION_DENIED
    assert rules.destination(str(address), port) == (judged.version, expected)
    assert rules.client_allowed(str(address)) == any(
        judged.version == network.version and judged in network
        for network in rules.allow_clients)


@given(st.one_of(st.text(max_size=45), st.ip_addresses().map(str),
                 st.from_regex(r"[0-9a-fA-F.:%]{1,24}", fullmatch=True)))
def test_numeric_reads_what_ipaddress_reads(text: str) -> None:
    number = egress.numeric(text)
    address = normalised(text)
    if address is None:
        assert number is None
    else:
        assert number == (address.version, int(address))
