"""What the locustfile sends, without locust (pure, unit-tested): ids, the client address each
simulated client uses, and the requests and messages themselves.

Client addresses, so that the backends' view of the client can be checked: a client either
goes through a ``-proxied`` listener with a PROXY header carrying a documentation address
(203.0.113.0/24, 2001:db8::/32, RFC 5737 and 3849: never a real sender), which the backend must
see, or connects directly from a loopback source address of its own (127.0.0.2 to 127.0.0.254;
never 127.0.0.1, the ingress's own source towards the backends, so that a backend that reports
its TCP peer instead of the client is caught).  Against a host that is not loopback, direct
clients do not bind and their address is not checked.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import os
import random
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

ID_HEADER = "X-Loadtest-Id"

_DOC_V4 = ipaddress.ip_network("203.0.113.0/24")
_DOC_V6 = ipaddress.ip_network("2001:db8::/32")
# Destinations written in PROXY headers: documentation addresses too, of the source's family.
PROXY_DESTINATION_V4 = "198.51.100.10"
PROXY_DESTINATION_V6 = "2001:db8:ffff::10"


class IdSource:
    """Unique ids for one locust process: a random prefix (processes and runs never collide)
    and a counter; only characters the stubs accept (``ingress.demo.stub_smtp.valid_id``)."""

    def __init__(self, prefix: str | None = None) -> None:
        self._prefix = prefix if prefix is not None else f"{secrets.token_hex(4)}{os.getpid():x}"
        self._counter = itertools.count(1)

    def next(self, kind: str) -> str:
        return f"{self._prefix}-{kind}-{next(self._counter)}"


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """How one simulated client connects: through a -proxied listener (``proxy_version`` 1 or 2)
    or directly; ``source`` is the address to bind (None: the system's choice) and ``client``
    the address the backend must report (None: not checked)."""

    proxied: bool
    proxy_version: int
    source: str | None
    client: str | None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def plan_client(rng: random.Random, *, proxied_share: float, ipv6_share: float,
                loopback: bool) -> ClientPlan:
    if rng.random() < proxied_share:
        if rng.random() < ipv6_share:
            address = str(_DOC_V6[rng.randrange(1, 1 << 16)])
        else:
            address = str(_DOC_V4[rng.randrange(1, 255)])
        return ClientPlan(True, rng.choice((1, 2)), None, address)
    if not loopback:
        return ClientPlan(False, 0, None, None)
    source = f"127.0.0.{rng.randrange(2, 255)}"
    return ClientPlan(False, 0, source, source)


def parse_host(host: str | None) -> str:
    """Locust's ``--host`` (``127.0.0.1``, ``http://mail.example.com``, ``[::1]``) as the
    address or name to connect to."""
    if not host:
        return "127.0.0.1"
    if "://" not in host:
        host = f"//{host}"
    name = urlsplit(host).hostname
    if not name:
        raise ValueError(f"no host name in {host!r}")
    return name


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    """A size between ``low`` and ``high``, small ones more often (as real API payloads)."""
    if high <= low:
        return low
    return int(math.exp(rng.uniform(math.log(max(low, 1)), math.log(high))))


# --- HTTP -----------------------------------------------------------------------------------

def tracking_path(rng: random.Random, kind: str) -> str:
    """A click or open path shaped like a tracking link: campaign, subscriber, signature."""
    campaign = rng.randrange(1, 5000)
    subscriber = rng.randrange(1, 10_000_000)
    signature = f"{rng.getrandbits(64):016x}"
    if kind == "open":
        return f"/ss/o/{campaign}/{subscriber}/{signature}.gif"
    return f"/ss/c/{campaign}/{subscriber}/{signature}?u=https%3A%2F%2Fexample.com%2Fp%2F{campaign}"


def send_json_body(rng: random.Random, ident: str, size: int) -> bytes:
    """A send.json request of about ``size`` bytes: the HTML part carries the bulk."""
    document = {
        "username": "loadtest", "password": "not-a-secret",
        "message": {
            "from_email": "news@example.com", "from_name": "Load Test",
            "to": [{"email": f"user{rng.randrange(1, 10**6)}@example.org", "name": "Reader"}],
            "subject": f"Load test {ident}", "mailclass": "loadtest",
            "custom_headers": {ID_HEADER: ident},
            "text": "Plain text part.\n",
            "html": "",
        },
    }
    base = len(json.dumps(document))
    filler = "<p>" + "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 2 + "</p>\n"
    repeat = max(0, size - base) // len(filler) + 1
    document["message"]["html"] = (filler * repeat)[:max(0, size - base)]  # type: ignore[index]
    return json.dumps(document).encode()


# --- SMTP -----------------------------------------------------------------------------------

def _padding(size: int, width: int = 76) -> bytes:
    """Body lines of at most ``width`` characters, none starting with a dot, to ``size`` bytes."""
    line = (b"The quick brown fox jumps over the lazy dog 0123456789 " * 2)[:width - 2]
    count = max(1, size // width)
    return (line + b"\r\n") * count


def _headers(ident: str, mail_from: str, to: str, subject: str, extra: str = "") -> bytes:
    return (f"From: {mail_from}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{ident}@loadtest.example>\r\n"
            f"{ID_HEADER}: {ident}\r\nMIME-Version: 1.0\r\n{extra}\r\n").encode()


def submission_message(ident: str, size: int) -> bytes:
    """A message as an application injects it on 587, of about ``size`` bytes (CRLF lines)."""
    head = _headers(ident, "news@example.com", "reader@example.org", f"Load test {ident}",
                    "Content-Type: text/plain; charset=us-ascii\r\n")
    return head + _padding(max(0, size - len(head)))


def _multipart_report(ident: str, size: int, *, mail_from: str, to: str, subject: str,
                      report_type: str, boundary: str, parts: list[tuple[str, str]]) -> bytes:
    """A multipart/report (RFC 6522) of about ``size`` bytes: ``parts`` are (content type,
    text) pairs; the padding stands for the original message, which ends the report."""
    head = _headers(ident, mail_from, to, subject,
                    f"Content-Type: multipart/report; report-type={report_type}; "
                    f'boundary="{boundary}"\r\n')
    body = "".join(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n{text}"
                   for content_type, text in parts).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + body + _padding(max(0, size - len(head) - len(body) - len(tail))) + tail


def bounce_message(ident: str, size: int) -> bytes:
    """A delivery status notification (RFC 3464) as a remote MTA returns it on port 25."""
    return _multipart_report(
        ident, size, mail_from="MAILER-DAEMON@mx.example.net",
        to=f"bounce-{ident}@return.example.com", subject="Undelivered Mail Returned to Sender",
        report_type="delivery-status", boundary=f"dsn-{ident}", parts=[
            ("text/plain", "Your message could not be delivered.\r\n\r\n"),
            ("message/delivery-status",
             "Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; "
             "gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"),
            ("text/rfc822-headers", "")])


def feedback_report(ident: str, size: int) -> bytes:
    """A feedback-loop complaint (ARF, RFC 5965) as a mailbox provider sends it."""
    return _multipart_report(
        ident, size, mail_from="fbl@isp.example.net", to=f"fbl-{ident}@return.example.com",
        subject="Abuse report", report_type="feedback-report", boundary=f"arf-{ident}", parts=[
            ("text/plain", "This is an email abuse report.\r\n\r\n"),
            ("message/feedback-report",
             "Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n\r\n"),
            ("message/rfc822", "")])


# --- egress ---------------------------------------------------------------------------------
#
# An MTA sending outbound mail through the egress tier asks for a source address one of three
# ways: SOCKS5 BIND to the source then CONNECT to the MX (KumoMTA's socks5_proxy_server), a
# SOCKS5 CONNECT alone (the listener's default source: the first of its egress_sources), or a
# PROXY header naming the source and the MX (KumoMTA's ha_proxy_server, v2 by default).  The MX
# sees the source as its TCP peer: that is the address the comparison checks.

EGRESS_MODES = ("socks5-bind", "socks5-connect", "forward-v2", "forward-v1")
DEFAULT_EGRESS_MODES = ("socks5-bind", "socks5-connect", "forward-v2")
SOURCE_HEADER = "X-Loadtest-Source"
# RFC 1928 replies worth a retry, as an MTA's queue would retry them: a failure of the proxy or
# of the path to the MX, not of the request (1 general failure, 3 network and 4 host
# unreachable, 5 connection refused, 6 TTL expired).  A refusal by rule (2), an unsupported
# command (7) or address type (8), and a refused greeting or password are the configuration's:
# retrying changes nothing.
RETRYABLE_REPLIES = frozenset({1, 3, 4, 5, 6})


def listener_of(mode: str) -> str:
    """Which egress listener a mode talks to: ``socks5`` or ``forward``."""
    return "socks5" if mode.startswith("socks5") else "forward"


@dataclass(frozen=True, slots=True)
class EgressPlan:
    """One outbound session: how it asks for its source (``mode``), the source it names (None
    for a CONNECT alone) and the address the MX must see."""

    mode: str
    requested: str | None
    expected: str

    @property
    def listener(self) -> str:
        return listener_of(self.mode)

    @property
    def proxy_version(self) -> int:
        return 1 if self.mode == "forward-v1" else 2


def egress_sources(text: str) -> tuple[str, ...]:
    """``--egress-sources``: comma-separated addresses, the listener's default first."""
    sources = tuple(item.strip() for item in text.split(",") if item.strip())
    if not sources:
        raise ValueError("--egress-sources names no address")
    for source in sources:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ValueError(f"--egress-sources: {source!r} is not an IP address") from None
    if len(set(sources)) != len(sources):
        raise ValueError("--egress-sources names an address twice")
    return sources


def egress_modes(text: str) -> tuple[str, ...]:
    """``--egress-modes``: comma-separated names of ``EGRESS_MODES``."""
    modes = tuple(item.strip() for item in text.split(",") if item.strip())
    unknown = [mode for mode in modes if mode not in EGRESS_MODES]
    if unknown or not modes:
        raise ValueError(f"--egress-modes: {', '.join(unknown) or 'none given'}; the modes "
                         f"are {', '.join(EGRESS_MODES)}")
    return modes


def plan_egress(rng: random.Random, modes: tuple[str, ...], sources: tuple[str, ...]
                ) -> EgressPlan:
    mode = rng.choice(modes)
    if mode == "socks5-connect":
        return EgressPlan(mode, None, sources[0])
    source = rng.choice(sources)
    return EgressPlan(mode, source, source)


def egress_retryable(step: str, code: int | None) -> bool:
    """Whether a refused SOCKS5 step (``ingress.demo.egress_clients.Socks5RefusedError``) is
    worth a retry: a closed connection (None) always is (the egress process going away)."""
    if code is None:
        return True
    if step in ("greeting", "authentication"):
        return False
    return code in RETRYABLE_REPLIES


def egress_message(ident: str, source: str, size: int) -> bytes:
    """An outbound message of about ``size`` bytes, naming the source it is to leave from."""
    head = _headers(ident, "news@example.com", "reader@example.net", f"Outbound {ident}",
                    f"{SOURCE_HEADER}: {source}\r\nContent-Type: text/plain; "
                    "charset=us-ascii\r\n")
    return head + _padding(max(0, size - len(head)))
