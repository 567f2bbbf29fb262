"""``python -m ingress.demo.egress_try``: one message through an egress listener as an MTA sends
it, with every SMTP line printed, so that the MX's replies show the address the session left
from (the demo's guide runs it: ``ingress/demo/single_node.py``)::

    python -m ingress.demo.egress_try --socks5 127.0.0.1:25000 [--source 127.0.0.52] \\
        --to 127.0.0.250:25025
    python -m ingress.demo.egress_try --forward 127.0.0.1:22526 --source 127.0.0.52 \\
        --to 127.0.0.250:25025 [--proxy-version 1]

``--socks5``: KumoMTA's exchange (``ingress/demo/egress_clients.py``): BIND to ``--source`` when
given, then CONNECT to the MX (without ``--source`` the listener's default source is used);
``--user`` and ``--password`` for a listener with a users file.  ``--forward``: a PROXY header
(v2, or v1) naming ``--source`` and the MX, as KumoMTA's ``ha_proxy_server`` writes it.  Then one
SMTP session: EHLO, MAIL, RCPT, DATA, QUIT; ``>`` lines are sent, ``<`` lines received, ``*``
lines about the proxy.  Exit status 0 when the MX queued the message, 1 when the proxy or the MX
refused it or the connection failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Sequence

from ingress.demo.egress_clients import Socks5RefusedError, proxy_header_connect, socks5_connect
from ingress.protocol import socks5

MAX_LINE = 4096
TIMEOUT = 10.0
# RFC 1928's REP values, and the method "no acceptable methods" (a greeting's refusal).
REPLY_NAMES = {
    socks5.REP_GENERAL_FAILURE: "general SOCKS server failure",
    socks5.REP_NOT_ALLOWED: "connection not allowed by ruleset",
    socks5.REP_NETWORK_UNREACHABLE: "network unreachable",
    socks5.REP_HOST_UNREACHABLE: "host unreachable",
    socks5.REP_CONNECTION_REFUSED: "connection refused",
    socks5.REP_TTL_EXPIRED: "TTL expired",
    socks5.REP_COMMAND_NOT_SUPPORTED: "command not supported",
    socks5.REP_ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
    socks5.METHOD_NONE_ACCEPTABLE: "no acceptable methods",
}


def endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as a pair; ValueError with the reason otherwise."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, [::1]:25")
    return host, int(port)


def refusal_text(error: Socks5RefusedError) -> str:
    if error.code is None:
        return f"the proxy closed the connection at the {error.step} step"
    name = REPLY_NAMES.get(error.code, "unassigned")
    return f"refused at the {error.step} step: reply {error.code} ({name})"


def message_text(source: str | None) -> bytes:
    subject = f"from {source}" if source else "from the default source"
    return (f"From: demo@example.org\r\nTo: someone@example.net\r\n"
            f"Subject: through the egress tier, {subject}\r\n\r\n"
            f"Hello from mta-ingress's egress demo.\r\n").encode()


class SmtpDialogue:
    """An SMTP client's side over a connected blocking socket, every line echoed: just what a
    message needs (no pipelining, no extensions), so that the transcript is the whole story."""

    def __init__(self, sock: socket.socket, echo: Callable[[str], None] = print) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")
        self._echo = echo

    def reply(self) -> tuple[int, list[str]]:
        """The next reply: its code (0 when the line has none) and its lines."""
        lines: list[str] = []
        while True:
            raw = self._file.readline(MAX_LINE)
            if not raw:
                raise ConnectionError("the connection closed before a reply")
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._echo(f"< {text}")
            lines.append(text)
            if text[3:4] != "-":
                return (int(text[:3]) if text[:3].isdigit() else 0), lines

    def command(self, line: str) -> tuple[int, list[str]]:
        self._echo(f"> {line}")
        self._sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def data(self, message: bytes) -> tuple[int, list[str]]:
        """The message's lines after a 354, dot-stuffed, and the final dot."""
        lines = message.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
        body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                        for line in lines)
        self._echo(f"> ({len(body)} bytes of message)")
        self._echo("> .")
        self._sock.sendall(body + b".\r\n")
        return self.reply()

    def close(self) -> None:
        self._file.close()


def send_message(sock: socket.socket, source: str | None, *, echo: Callable[[str], None] = print,
                 helo: str = "egress-try.demo") -> bool:
    """One SMTP transaction on a socket whose next bytes are the MX's banner; True when the
    message was queued (QUIT's reply does not matter then)."""
    dialogue = SmtpDialogue(sock, echo)
    try:
        code, _ = dialogue.reply()
        if code != 220:
            return False
        for line, expected in ((f"EHLO {helo}", 250), ("MAIL FROM:<demo@example.org>", 250),
                               ("RCPT TO:<someone@example.net>", 250), ("DATA", 354)):
            code, _ = dialogue.command(line)
            if code != expected:
                return False
        code, _ = dialogue.data(message_text(source))
        if code != 250:
            return False
        try:
            dialogue.command("QUIT")
        except OSError:
            pass  # queued already
        return True
    finally:
        dialogue.close()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingress.demo.egress_try",
        description="Send one message through an egress listener and print the MX's replies.")
    proxy = parser.add_mutually_exclusive_group(required=True)
    proxy.add_argument("--socks5", type=endpoint, metavar="HOST:PORT",
                       help="a socks5 listener: BIND to --source (when given), then CONNECT")
    proxy.add_argument("--forward", type=endpoint, metavar="HOST:PORT",
                       help="a forward listener: a PROXY header naming --source and the MX")
    parser.add_argument("--to", type=endpoint, required=True, metavar="HOST:PORT",
                        help="the MX (an address: the egress tier resolves no names)")
    parser.add_argument("--source", default=None,
                        help="the address to send from (socks5: default, the listener's)")
    parser.add_argument("--proxy-version", type=int, choices=(1, 2), default=2,
                        help="--forward: the PROXY header's version (2)")
    parser.add_argument("--user", default=None, help="--socks5: RFC 1929 user name")
    parser.add_argument("--password", default="", help="--socks5: with --user")
    args = parser.parse_args(argv)
    if args.forward is not None and args.source is None:
        parser.error("--forward needs --source: the PROXY header names the address to send from")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    proxy: tuple[str, int] = args.socks5 or args.forward
    try:
        sock = socket.create_connection(proxy, timeout=TIMEOUT)
    except OSError as error:
        print(f"* cannot connect to {proxy[0]}:{proxy[1]}: {error}")
        return 1
    with sock:
        try:
            if args.socks5 is not None:
                credentials = ((args.user.encode(), args.password.encode())
                               if args.user is not None else None)
                session = socks5_connect(sock, args.to, source=args.source,
                                         credentials=credentials)
                bound = (f"BIND {args.source} granted, " if session.bound is not None else "")
                print(f"* SOCKS5 {proxy[0]}:{proxy[1]}: {bound}CONNECT {args.to[0]}:{args.to[1]}"
                      f" granted; the proxy's socket to the MX is "
                      f"{session.local[0]}:{session.local[1]}")
            else:
                proxy_header_connect(sock, args.source, args.to, version=args.proxy_version)
                print(f"* PROXY v{args.proxy_version} header to {proxy[0]}:{proxy[1]}: from "
                      f"{args.source} to {args.to[0]}:{args.to[1]} (no reply: the MX's banner "
                      "is the answer)")
            queued = send_message(sock, args.source)
        except Socks5RefusedError as error:
            print(f"* {refusal_text(error)}")
            return 1
        except OSError as error:
            print(f"* the session failed: {error}")
            return 1
    return 0 if queued else 1


if __name__ == "__main__":
    sys.exit(main())
