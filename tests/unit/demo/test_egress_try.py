"""The demo's egress client, without a proxy: its arguments, its refusal messages, and its SMTP
side against a scripted MX on a socket pair (the whole exchange with the egress listeners is
run by tests/integration/test_demo.py)."""

from __future__ import annotations

import socket

import pytest

from ingress.demo import egress_try
from ingress.demo.egress_clients import Socks5RefusedError
from ingress.protocol import socks5


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:25000", ("127.0.0.1", 25000)), ("[::1]:25", ("::1", 25)),
    ("mx.example.net:25", ("mx.example.net", 25))])
def test_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert egress_try.endpoint(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":25", "127.0.0.1:", "127.0.0.1:0",
                                  "127.0.0.1:65536", "::1:25", "127.0.0.1:x"])
def test_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
        egress_try.endpoint(text)


def test_refusal_text_names_the_step_and_the_reply() -> None:
    assert egress_try.refusal_text(Socks5RefusedError("bind", socks5.REP_NOT_ALLOWED)) == (
        "refused at the bind step: reply 2 (connection not allowed by ruleset)")
    assert "closed the connection at the greeting step" in egress_try.refusal_text(
        Socks5RefusedError("greeting", None))
    assert "(unassigned)" in egress_try.refusal_text(Socks5RefusedError("connect", 0x42))


def test_forward_needs_a_source() -> None:
    with pytest.raises(SystemExit) as exited:
        egress_try.parse_args(["--forward", "127.0.0.1:2526", "--to", "127.0.0.250:25"])
    assert exited.value.code == 2
    args = egress_try.parse_args(["--socks5", "127.0.0.1:5000", "--to", "127.0.0.250:25"])
    assert args.source is None
    assert args.socks5 == ("127.0.0.1", 5000)


MX_SCRIPT = (b"220 mx.test ESMTP; your address is 127.0.0.52:4000\r\n"
             b"250-mx.test hello\r\n250 PIPELINING\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
             b"354 go on\r\n250 2.0.0 queued (client 127.0.0.52:4000)\r\n221 bye\r\n")


def _sent(peer: socket.socket) -> bytes:
    peer.settimeout(1)
    data = b""
    while True:
        try:
            chunk = peer.recv(65536)
        except TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk


def test_send_message_against_a_scripted_mx() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(MX_SCRIPT)  # every reply waits in the socket for its command
        lines: list[str] = []
        assert egress_try.send_message(ours, "127.0.0.52", echo=lines.append)
        ours.shutdown(socket.SHUT_WR)
        sent = _sent(peer)
    assert sent.startswith(b"EHLO egress-try.demo\r\nMAIL FROM:<demo@example.org>\r\n"
                           b"RCPT TO:<someone@example.net>\r\nDATA\r\n")
    assert sent.endswith(b"\r\n.\r\nQUIT\r\n")
    assert b"Subject: through the egress tier, from 127.0.0.52\r\n" in sent
    assert lines[0] == "< 220 mx.test ESMTP; your address is 127.0.0.52:4000"
    assert "< 250 2.0.0 queued (client 127.0.0.52:4000)" in lines
    assert lines[-1] == "< 221 bye"


@pytest.mark.parametrize(("script", "step"), [
    (b"554 go away\r\n", 0), (b"220 hi\r\n250 ok\r\n550 no\r\n", 2),
    (b"220 hi\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n451 later\r\n", 5)])
def test_send_message_stops_at_the_first_refusal(script: bytes, step: int) -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(script)
        lines: list[str] = []
        assert not egress_try.send_message(ours, None, echo=lines.append)
    assert len([line for line in lines if line.startswith("<")]) == step + 1


def test_data_is_dot_stuffed() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b"250 ok\r\n")
        dialogue = egress_try.SmtpDialogue(ours, echo=lambda _: None)
        assert dialogue.data(b"a\r\n.b\r\n..\r\n")[0] == 250
        dialogue.close()
        ours.shutdown(socket.SHUT_WR)
        assert _sent(peer) == b"a\r\n..b\r\n...\r\n.\r\n"


def test_a_closed_connection_is_an_error_not_a_reply() -> None:
    ours, peer = socket.socketpair()
    with ours:
        peer.sendall(b"250-partial\r\n")
        peer.close()
        with pytest.raises(ConnectionError):
            egress_try.SmtpDialogue(ours, echo=lambda _: None).reply()
