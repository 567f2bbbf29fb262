"""The egress tier's decisions: who may use a listener, which address a session leaves from, and
where it may go.

An egress listener relays an MTA's outbound SMTP from one of the host's public sending addresses.
The addresses are the operator's reputation: a proxy that lets anyone, or any destination, or any
source through is an open relay of IP reputation, so every check here refuses by default and
names its reason (the access log's ``reason``, the refusal metric's label).

The checks take address text, since that is what the SOCKS5 codec and the PROXY header reader
hand over, and normalise it first: an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is the
IPv4 address it maps, so that it cannot slip past an IPv4 deny range.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = (25,)
# Never worth reaching through a sending address, and what a client inside the cluster could
# otherwise reach through us: loopback, link-local (cloud metadata at 169.254.169.254), the
# private ranges clusters take their pod and service networks from, shared address space
# (100.64/10, used by some CNIs), "this network" (0/8). The allow_clients ranges are added to
# whatever this list is.
DEFAULT_DENY_DESTINATIONS = (
    "127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "10.0.0.0/8", "172.16.0.0/12",
    "192.168.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "fc00::/7",
)

# Refusal reasons: tokens for logs and metric labels (a fixed set: labels stay bounded).
CLIENT_NOT_ALLOWED = "client-not-allowed"
SOURCE_NOT_ALLOWED = "source-not-allowed"
NO_SOURCE_FOR_FAMILY = "no-source-for-family"
PORT_NOT_ALLOWED = "port-not-allowed"
DESTINATION_DENIED = "destination-denied"
NOT_AN_ADDRESS = "not-an-address"
REASONS = (CLIENT_NOT_ALLOWED, SOURCE_NOT_ALLOWED, NO_SOURCE_FOR_FAMILY, PORT_NOT_ALLOWED,
           DESTINATION_DENIED, NOT_AN_ADDRESS)


def normalised(host: str) -> IPAddress | None:
    """The address ``host`` names, IPv4-mapped IPv6 unmapped; None if it is not an address
    literal (a zone index such as ``fe80::1%eth0`` counts as not one)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> IPNetwork:
    """A CIDR (a bare address is its /32 or /128); ValueError with the reason otherwise, also
    for host bits set (``10.0.0.1/8``), which is usually a typo for the network."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a network in CIDR form like 10.0.0.0/8"
                             ) from error
        raise ValueError(f"{text!r} has host bits set; the network is {loose}") from error


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == network.version and address in network
               for network in networks)


@dataclass(frozen=True, slots=True)
class SourceChoice:
    """The address a session leaves from, or why there is none."""

    address: str | None
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """One listener's rules. ``sources`` are address texts in configured order: the first of
    each family is the default for a destination of that family."""

    sources: tuple[str, ...]
    ports: frozenset[int]
    allow_clients: tuple[IPNetwork, ...]
    deny_destinations: tuple[IPNetwork, ...]

    @classmethod
    def build(cls, sources: tuple[str, ...], ports: tuple[int, ...],
              allow_clients: tuple[str, ...], deny_destinations: tuple[str, ...]
              ) -> EgressPolicy:
        """From configuration text (already validated: a bad value raises ValueError)."""
        addresses = []
        for source in sources:
            address = normalised(source)
            if address is None:
                raise ValueError(f"{source!r} is not an IP address")
            addresses.append(str(address))
        clients = tuple(parse_network(text) for text in allow_clients)
        denied = tuple(parse_network(text) for text in deny_destinations)
        # A client must not reach its own network through the sending addresses.
        return cls(tuple(addresses), frozenset(ports), clients, denied + clients)

    def client_allowed(self, host: str) -> bool:
        address = normalised(host)
        return address is not None and _within(address, self.allow_clients)

    def source_for(self, requested: str | None, destination_version: int | None = None
                   ) -> SourceChoice:
        """The source for a session: ``requested`` if it is one of the configured sources,
        else (nothing requested) the first configured one of the destination's family."""
        if requested is not None:
            address = normalised(requested)
            if address is None:
                return SourceChoice(None, NOT_AN_ADDRESS)
            text = str(address)
            if text not in self.sources:
                return SourceChoice(None, SOURCE_NOT_ALLOWED)
            if destination_version is not None and address.version != destination_version:
                return SourceChoice(None, NO_SOURCE_FOR_FAMILY)
            return SourceChoice(text)
        for source in self.sources:
            address = normalised(source)
            if address is not None and (destination_version is None
                                        or address.version == destination_version):
                return SourceChoice(source)
        return SourceChoice(None, NO_SOURCE_FOR_FAMILY)

    def destination_refusal(self, host: str, port: int) -> str | None:
        """Why the session may not go to ``host``:``port``, or None when it may."""
        address = normalised(host)
        if address is None:
            return NOT_AN_ADDRESS
        if port not in self.ports:
            return PORT_NOT_ALLOWED
        # Whatever the configured list says: these reach this host itself or nobody's MX.
        if (address.is_unspecified or address.is_multicast
                or address == ipaddress.IPv4Address("255.255.255.255")):
            return DESTINATION_DENIED
        if _within(address, self.deny_destinations):
            return DESTINATION_DENIED
        return None

    def destination_version(self, host: str) -> int | None:
        address = normalised(host)
        return address.version if address is not None else None
