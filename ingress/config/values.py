"""The configuration's scalar values, parsed and printed: durations, sizes, addresses."""

from __future__ import annotations

import ipaddress
import re

from ingress.config.schema import Address
from routing.backends import is_ip

# --- durations ---------------------------------------------------------------------------------

_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"5s"``, ``"1m"``, ``"1h"``, ``"1m30s"`` -> seconds; HAProxy-style units."""
    text = text.strip()
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match["number"]) * _UNIT_SECONDS[match["unit"]]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration like 500ms, 5s, 1m or 1h")
    return total


_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>B|KiB|MiB|GiB)?")
_UNIT_BYTES = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if match is None or int(match["number"]) == 0:
        raise ValueError(f"{text!r} is not a size like 512KiB, 10MiB or 1GiB")
    return int(match["number"]) * _UNIT_BYTES[match["unit"]]


def format_duration(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:.12g}ms"


# A listener's, backend's or release's name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --- addresses ---------------------------------------------------------------------------------

HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)


def parse_address(text: str, *, allow_hostname: bool) -> Address:
    """``host:port``, ``[v6]:port``; for binds also ``:port`` (every IPv4 interface, as HAProxy)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r}: an IPv6 address is written [address]:port")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port: write host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, [address]:port")
        if host == "":
            if allow_hostname:
                raise ValueError(f"{text!r} has no host")
            host = "0.0.0.0"
        if is_ip(host):
            host = str(ipaddress.ip_address(host))
        else:
            if not allow_hostname:
                raise ValueError(f"{text!r}: a listener binds an IP address, not {host!r}")
            if not HOSTNAME_RE.fullmatch(host):
                raise ValueError(f"{text!r}: {host!r} is not a valid host name")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return Address(host, int(port_text))


def parse_nameserver(text: str) -> Address:
    """A DNS server: ``ip`` (port 53), ``ip:port``, ``v6`` or ``[v6]:port``."""
    if is_ip(text):
        return Address(str(ipaddress.ip_address(text)), 53)
    if text.startswith(":"):
        raise ValueError(f"{text!r}: write the nameserver's IP address, ip or ip:port")
    try:
        return parse_address(text, allow_hostname=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a nameserver address: write ip, ip:port or "
                         "[ipv6]:port") from None
