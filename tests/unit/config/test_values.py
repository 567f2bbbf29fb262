"""ingress.config.values: durations, sizes and addresses, parsed and printed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress import config
from ingress.config import Address, format_duration, parse_address, parse_duration

# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), ("1h", 3600.0), ("1m30s", 90.0),
     ("1h1m1s", 3661.0), ("1.5m", 90.0), (" 5s ", 5.0), ("0s", 0.0), ("2s500ms", 2.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_one_minute_thirty() -> None:
    assert parse_duration("1m30s") == 90
    assert format_duration(90) == "90s"


@pytest.mark.parametrize("text", ["", " ", "5", "s", "5 s", "5S", "-5s", "5 parsecs", "5d",
                                  "1m 30s", "5s5", "1e3s", "+5s", "5sec", ".5s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration like 500ms, 5s, 1m or 1h"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0ms"), (0.5, "500ms"), (1.0, "1s"), (59.0, "59s"), (60.0, "1m"), (90.0, "90s"),
     (3600.0, "1h"), (5400.0, "90m"), (3601.0, "3601s"), (1.25, "1250ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def _canonical(milliseconds: int) -> str:
    for unit in ("h", "m", "s"):
        if milliseconds and milliseconds % _UNIT_MS[unit] == 0:
            return f"{milliseconds // _UNIT_MS[unit]}{unit}"
    return f"{milliseconds}ms"


@given(number=st.integers(min_value=0, max_value=10**9), unit=st.sampled_from(list(_UNIT_MS)))
def test_duration_round_trip(number: int, unit: str) -> None:
    seconds = parse_duration(f"{number}{unit}")
    assert seconds == pytest.approx(number * _UNIT_MS[unit] / 1000, rel=1e-12)
    text = format_duration(seconds)
    assert text == _canonical(number * _UNIT_MS[unit])
    assert parse_duration(text) == seconds


# --- addresses -----------------------------------------------------------------------------------


@given(ip=st.ip_addresses(v=4), port=st.integers(min_value=1, max_value=65535),
       allow_hostname=st.booleans())
def test_parse_any_ipv4_address(ip: ipaddress.IPv4Address, port: int,
                                allow_hostname: bool) -> None:
    text = f"{ip}:{port}"
    address = parse_address(text, allow_hostname=allow_hostname)
    assert address == Address(str(ip), port)
    assert str(address) == text


@given(ip=st.ip_addresses(v=6), port=st.integers(min_value=1, max_value=65535),
       allow_hostname=st.booleans())
def test_parse_any_ipv6_address(ip: ipaddress.IPv6Address, port: int,
                                allow_hostname: bool) -> None:
    text = f"[{ip}]:{port}"
    address = parse_address(text, allow_hostname=allow_hostname)
    assert address == Address(str(ip), port)
    assert str(address) == text
    with pytest.raises(ValueError, match="IPv6 address in brackets"):
        parse_address(f"{ip}:{port}", allow_hostname=allow_hostname)


@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_parse_address_rejects_out_of_range_ports(port: int) -> None:
    with pytest.raises(ValueError, match="the port must be a number from 1 to 65535"):
        parse_address(f"127.0.0.1:{port}", allow_hostname=False)


@pytest.mark.parametrize(
    ("text", "allow_hostname", "expected"),
    [
        (":25", False, Address("0.0.0.0", 25)),
        ("mta:25", True, Address("mta", 25)),
        ("ga1-ingress-mta:587", True, Address("ga1-ingress-mta", 587)),
        ("a.b-c.d_e.:80", True, Address("a.b-c.d_e.", 80)),
        ("[fe80::1%eth0]:25", False, Address("fe80::1%eth0", 25)),
        ("10.0.0.1:00025", False, Address("10.0.0.1", 25)),
    ],
)
def test_parse_address_accepts(text: str, allow_hostname: bool, expected: Address) -> None:
    assert parse_address(text, allow_hostname=allow_hostname) == expected


@pytest.mark.parametrize(
    ("text", "allow_hostname", "message"),
    [
        (":25", True, "has no host"),
        ("mta", True, "has no port"),
        ("mta:25", False, "a listener binds an IP address, not 'mta'"),
        ("mta:", True, "the port must be a number"),
        ("a..b:25", True, "is not a valid host name"),
        (f"{'a' * 64}:25", True, "is not a valid host name"),
        ("mta-:25", True, "is not a valid host name"),
        ("m ta:25", True, "is not a valid host name"),
        ("[::1:25", False, r"is written \[address\]:port"),
        ("[::1]25", False, r"is written \[address\]:port"),
        ("[mta]:25", True, "is not an IPv6 address"),
        ("::1:25", True, "in brackets"),
        ("1.2.3.4:-1", False, "the port must be a number"),
    ],
)
def test_parse_address_rejects(text: str, allow_hostname: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text, allow_hostname=allow_hostname)


@pytest.mark.parametrize(("text", "expected"), [
    ("1024", 1024), ("512KiB", 512 * 1024), ("10MiB", 10 * 1024**2), ("1GiB", 1024**3),
    ("7B", 7)])
def test_parse_size(text: str, expected: int) -> None:
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "10MB", "1.5MiB", "-1", "ten"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size like"):
        config.parse_size(text)
