"""ingress.demo.egress_clients: KumoMTA's exchanges over a socket pair, replies split anyhow."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ingress.demo.egress_clients import Socks5RefusedError, socks5_connect
from ingress.protocol import socks5


def _serve(sock: socket.socket, pieces: list[bytes]) -> threading.Thread:
    def run() -> None:
        for piece in pieces:
            time.sleep(0.05)
            sock.sendall(piece)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_kumomta_exchange_with_replies_split_across_segments() -> None:
    client, server = socket.socketpair()
    with client, server:
        client.settimeout(5)  # a timeout makes the socket non-blocking underneath
        replies = (socks5.encode_method_choice(socks5.METHOD_NO_AUTH)
                   + socks5.encode_reply(socks5.REP_SUCCEEDED, ("127.0.0.7", 0))
                   + socks5.encode_reply(socks5.REP_SUCCEEDED, ("127.0.0.7", 40000))
                   + b"220 banner\r\n")
        thread = _serve(server, [replies[i:i + 3] for i in range(0, len(replies), 3)])
        session = socks5_connect(client, ("192.0.2.25", 25), source="127.0.0.7")
        thread.join()
        assert session.bound == ("127.0.0.7", 0)
        assert session.local == ("127.0.0.7", 40000)
        assert client.recv(64) == b"220 banner\r\n"  # not a byte of it was taken
        sent = server.recv(1024)
        assert sent == (socks5.encode_greeting([socks5.METHOD_NO_AUTH])
                        + socks5.encode_request(socks5.CMD_BIND, "127.0.0.7", 0)
                        + socks5.encode_request(socks5.CMD_CONNECT, "192.0.2.25", 25))


def test_a_refused_bind_names_its_step_and_code() -> None:
    client, server = socket.socketpair()
    with client, server:
        client.settimeout(5)
        thread = _serve(server, [socks5.encode_method_choice(socks5.METHOD_NO_AUTH),
                                 socks5.encode_reply(socks5.REP_NOT_ALLOWED)])
        with pytest.raises(Socks5RefusedError) as refused:
            socks5_connect(client, ("192.0.2.25", 25), source="127.0.0.9")
        thread.join()
        assert (refused.value.step, refused.value.code) == ("bind", socks5.REP_NOT_ALLOWED)


def test_a_close_mid_reply_is_a_refusal_without_a_code() -> None:
    client, server = socket.socketpair()

    def half_a_reply() -> None:
        server.recv(16)  # the greeting
        server.sendall(b"\x05")
        server.close()

    thread = threading.Thread(target=half_a_reply)
    thread.start()
    with client:
        client.settimeout(5)
        with pytest.raises(Socks5RefusedError) as refused:
            socks5_connect(client, ("192.0.2.25", 25))
        thread.join()
        assert (refused.value.step, refused.value.code) == ("greeting", None)
