"""What an MTA sends to the egress tier, over a blocking socket: the demo's commands, the tests
and the load test speak through these.

``socks5_connect`` is KumoMTA's exchange (kumod's egress_source.rs, ``socks5_proxy_server``):
greeting offering "no authentication" and, with credentials, username/password; RFC 1929 when
chosen; BIND carrying ``socks5_proxy_source_address`` (port 0); CONNECT to the MX. Each step
waits for its reply, as kumod does. ``proxy_header_connect`` is its ``ha_proxy_server`` mode: one
PROXY header, then the SMTP session, with no reply from the proxy.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ingress.protocol import proxy_protocol, socks5

T = TypeVar("T")


class Socks5RefusedError(ConnectionError):
    """The proxy answered a step with something other than success."""

    def __init__(self, step: str, code: int | None) -> None:
        super().__init__(f"SOCKS5 {step} refused (reply {code!r})")
        self.step = step
        self.code = code


@dataclass(frozen=True, slots=True)
class Socks5Session:
    bound: tuple[str, int] | None  # the BIND reply's address (None without a BIND)
    local: tuple[str, int]         # the CONNECT reply's: where the proxy's socket is


def _read(sock: socket.socket, parse: Callable[[bytes], tuple[T, int] | None], step: str) -> T:
    """One message, and not a byte more: what follows (an SMTP banner right after the CONNECT
    reply) stays in the socket for the caller. Byte by byte: a reply is at most 22 bytes for an
    address, and a peek cannot wait for more bytes on a socket with a timeout."""
    data = b""
    while (parsed := parse(data)) is None:
        byte = sock.recv(1)
        if not byte:
            raise Socks5RefusedError(step, None)
        data += byte
    return parsed[0]


def socks5_connect(sock: socket.socket, destination: tuple[str, int], *,
                   source: str | None = None,
                   credentials: tuple[bytes, bytes] | None = None) -> Socks5Session:
    """Negotiate on a socket connected to a SOCKS5 listener; raises Socks5RefusedError."""
    methods = [socks5.METHOD_NO_AUTH]
    if credentials is not None:
        methods.append(socks5.METHOD_USERPASS)
    sock.sendall(socks5.encode_greeting(methods))
    method = _read(sock, socks5.parse_method_choice, "greeting")
    if method == socks5.METHOD_USERPASS:
        if credentials is None:
            raise Socks5RefusedError("greeting", method)
        sock.sendall(socks5.encode_credentials(*credentials))
        ok = _read(sock, socks5.parse_auth_status, "authentication")
        if not ok:
            raise Socks5RefusedError("authentication", socks5.AUTH_FAILED)
    elif method != socks5.METHOD_NO_AUTH:
        raise Socks5RefusedError("greeting", method)
    bound = None
    if source is not None:
        sock.sendall(socks5.encode_request(socks5.CMD_BIND, source, 0))
        reply = _read(sock, socks5.parse_reply, "bind")
        if reply.code != socks5.REP_SUCCEEDED:
            raise Socks5RefusedError("bind", reply.code)
        bound = (reply.host, reply.port)
    sock.sendall(socks5.encode_request(socks5.CMD_CONNECT, *destination))
    reply = _read(sock, socks5.parse_reply, "connect")
    if reply.code != socks5.REP_SUCCEEDED:
        raise Socks5RefusedError("connect", reply.code)
    return Socks5Session(bound=bound, local=(reply.host, reply.port))


def proxy_header_connect(sock: socket.socket, source: str, destination: tuple[str, int], *,
                         version: int = 2) -> None:
    """Write the forward mode's PROXY header: the source to send from, the remote to reach
    (the source port is the client's own, as HAProxy's clients send it)."""
    client = (source, sock.getsockname()[1])
    header = (proxy_protocol.encode_v2(client, destination) if version == 2
              else proxy_protocol.encode_v1(client, destination))
    sock.sendall(header)
