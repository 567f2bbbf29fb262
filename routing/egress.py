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
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = (25,)
CLIENT_CACHE_SIZE = 4096
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


# An address as numbers: (IP version, the address as an integer). The checks below run per
# session, so they compare integers rather than make ipaddress objects (a parse and a few
# containment tests cost about 10 us in ipaddress, well under 1 us this way).
Numeric = tuple[int, int]
# (version, network, mask) per range.
Ranges = tuple[tuple[int, int, int], ...]

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_V4_ALL, _V6_ALL = (1 << 32) - 1, (1 << 128) - 1
# Refused whatever the configured list says: they reach this host itself or nobody's MX. The
# unspecified addresses (a connect to 0.0.0.0 reaches this host), IPv4 broadcast, multicast.
_ALWAYS_DENIED: Ranges = (
    (4, 0, _V4_ALL), (6, 0, _V6_ALL), (4, _V4_ALL, _V4_ALL),
    (4, 0xE0000000, 0xF0000000), (6, 0xFF << 120, 0xFF << 120),
)


def numeric(host: str) -> Numeric | None:
    """``host`` as numbers, IPv4-mapped IPv6 unmapped; None if it is not an address literal
    (as for ``normalised``: inet_pton is as strict as ipaddress, no zone index, no leading
    zeros)."""
    # ValueError: a NUL or a character that does not encode, which no address holds.
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
    except (OSError, ValueError):
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def _ranges(networks: tuple[IPNetwork, ...]) -> Ranges:
    return tuple((network.version, int(network.network_address), int(network.netmask))
                 for network in networks)


def _within(address: Numeric, ranges: Ranges) -> bool:
    version, value = address
    for range_version, network, mask in ranges:
        if range_version == version and value & mask == network:
            return True
    return False


# Not frozen, its __init__ written out: one or two per session, and a frozen dataclass's
# generated __init__ is interpreted (ingress/protocol/proxy_protocol.py's ProxyHeader says more).
@dataclass(slots=True, init=False)
class SourceChoice:
    """The address a session leaves from, or why there is none."""

    address: str | None
    refusal: str | None

    def __init__(self, address: str | None, refusal: str | None = None) -> None:
        self.address = address
        self.refusal = refusal


class EgressPolicy:
    """One listener's rules. ``sources`` are address texts in configured order: the first of
    each family is the default for a destination of that family."""

    __slots__ = ("_allowed", "_clients", "_denied", "_sources_by_number", "allow_clients",
                 "deny_destinations", "ports", "sources")

    def __init__(self, sources: tuple[str, ...], ports: frozenset[int],
                 allow_clients: tuple[IPNetwork, ...],
                 deny_destinations: tuple[IPNetwork, ...]) -> None:
        self.sources = sources
        self.ports = ports
        self.allow_clients = allow_clients
        self.deny_destinations = deny_destinations
        self._allowed = _ranges(allow_clients)
        self._denied = _ALWAYS_DENIED + _ranges(deny_destinations)
        self._sources_by_number: dict[Numeric, str] = {}
        for source in sources:
            number = numeric(source)
            if number is None:
                raise ValueError(f"{source!r} is not an IP address")
            self._sources_by_number.setdefault(number, source)
        # An MTA cluster is a few addresses, each opening sessions all day: the verdict on each
        # is kept (bounded: anything beyond is judged each time, as a flood of refused
        # addresses would be).
        self._clients: dict[str, bool] = {}

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
        verdict = self._clients.get(host)
        if verdict is None:
            address = numeric(host)
            verdict = address is not None and _within(address, self._allowed)
            if len(self._clients) < CLIENT_CACHE_SIZE:
                self._clients[host] = verdict
        return verdict

    def source_for(self, requested: str | None, destination_version: int | None = None
                   ) -> SourceChoice:
        """The source for a session: ``requested`` if it is one of the configured sources,
        else (nothing requested) the first configured one of the destination's family."""
        if requested is not None:
            address = numeric(requested)
            if address is None:
                return SourceChoice(None, NOT_AN_ADDRESS)
            source = self._sources_by_number.get(address)
            if source is None:
                return SourceChoice(None, SOURCE_NOT_ALLOWED)
            if destination_version is not None and address[0] != destination_version:
                return SourceChoice(None, NO_SOURCE_FOR_FAMILY)
            return SourceChoice(source)
        for number, source in self._sources_by_number.items():
            if destination_version is None or number[0] == destination_version:
                return SourceChoice(source)
        return SourceChoice(None, NO_SOURCE_FOR_FAMILY)

    def destination(self, host: str, port: int) -> tuple[int, str | None]:
        """The destination's IP version (0 when it is no address) and why the session may
        not go to ``host``:``port`` (None when it may)."""
        address = numeric(host)
        if address is None:
            return 0, NOT_AN_ADDRESS
        if port not in self.ports:
            return address[0], PORT_NOT_ALLOWED
        if _within(address, self._denied):
            return address[0], DESTINATION_DENIED
        return address[0], None

    def destination_refusal(self, host: str, port: int) -> str | None:
        """Why the session may not go to ``host``:``port``, or None when it may."""
        return self.destination(host, port)[1]

    def destination_version(self, host: str) -> int | None:
        address = numeric(host)
        return address[0] if address is not None else None
