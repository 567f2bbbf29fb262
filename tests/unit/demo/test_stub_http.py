"""The stub services: what the HTTP stub answers and counts, and the SMTP stub's counts, driven
through their Protocols with a recording transport (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest

from ingress.demo import stub_http, stub_smtp


class RecordingTransport:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def responses(data: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """Parse the stub's output with h11, the reference implementation."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(bytes(data))
    parsed: list[tuple[int, dict[str, str], Any]] = []
    status = 0
    headers: dict[str, str] = {}
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            parsed.append((status, headers, json.loads(body) if body else None))
            body = b""
            if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
                break
            client.start_next_cycle()
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
        else:
            break
    return parsed


def session(service: stub_http.StubService, peer: tuple[str, int] = ("127.0.0.1", 40000)
            ) -> tuple[stub_http.StubHttp, RecordingTransport]:
    protocol = stub_http.StubHttp(service)
    transport = RecordingTransport(peer)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


@pytest.mark.parametrize(("values", "peer", "client"), [
    ([], "10.0.0.1", "10.0.0.1"),
    (["127.0.0.1"], "10.0.0.1", "127.0.0.1"),
    (["198.51.100.1, 203.0.113.9"], "10.0.0.1", "203.0.113.9"),
    (["198.51.100.1", "127.0.0.1"], "10.0.0.1", "127.0.0.1"),
    (["198.51.100.1", " , "], "10.0.0.1", "198.51.100.1"),
    (["  "], "10.0.0.1", "10.0.0.1"),
])
def test_forwarded_client_is_the_last_entry(values: list[str], peer: str, client: str) -> None:
    assert stub_http.forwarded_client(values, peer) == client


def test_request_document() -> None:
    document = stub_http.request_document(
        "mta", "POST", "/api/v1/send.json?x=1",
        [("Host", "example.org"), ("X-Forwarded-For", "192.0.2.1"),
         ("x-forwarded-for", "127.0.0.1")], ("::1", 5000), 12)
    assert document == {
        "service": "mta", "method": "POST", "path": "/api/v1/send.json?x=1",
        "host": "example.org", "x_forwarded_for": "192.0.2.1, 127.0.0.1",
        "client": "127.0.0.1", "peer": "[::1]:5000", "body_bytes": 12}
    bare = stub_http.request_document("tls", "GET", "/", [], None, 0)
    assert bare["x_forwarded_for"] is None
    assert bare["client"] == "unknown"
    assert bare["host"] is None


@pytest.mark.parametrize("keep_alive", [True, False])
def test_render_response_framing(keep_alive: bool) -> None:
    data = stub_http.render_response(200, {"a": "é"}, keep_alive=keep_alive)
    [(status, headers, body)] = responses(data)
    assert status == 200
    assert body == {"a": "é"}
    assert headers["content-type"] == "application/json"
    assert ("connection" in headers) != keep_alive
    head_only = stub_http.render_response(200, {"a": 1}, keep_alive=True, head_only=True)
    assert head_only.endswith(b"\r\n\r\n")
    assert b"Content-Length: 9\r\n" in head_only


def test_pipelined_keep_alive_requests_with_bodies_are_answered_and_counted() -> None:
    service = stub_http.StubService("event-tracker")
    protocol, transport = session(service)
    requests = (b"GET /click/1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n"
                b"POST /api/v1/send.json HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                b"X-Forwarded-For: 127.0.0.1\r\n\r\nhello"
                b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    for index in range(0, len(requests), 7):  # in pieces, as TCP may deliver them
        protocol.data_received(requests[index:index + 7])
    answers = [body for _, _, body in responses(transport.written)]
    assert [a["path"] for a in answers] == ["/click/1", "/api/v1/send.json", "/c"]
    assert [a["client"] for a in answers] == ["203.0.113.5", "127.0.0.1", "127.0.0.1"]
    assert [a["body_bytes"] for a in answers] == [0, 5, 5]
    assert {a["service"] for a in answers} == {"event-tracker"}
    assert answers[2]["peer"] == "127.0.0.1:40000"
    assert not transport.closed
    counts = service.counts()["http"]
    assert counts == {"connections": 1, "requests": 3, "body_bytes": 10,
                      "requests_by_client": {"203.0.113.5": 1, "127.0.0.1": 2}}


def test_counts_path_answers_without_counting_and_delete_resets() -> None:
    service = stub_http.StubService("mta", smtp=stub_smtp.StubStats())
    protocol, transport = session(service)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /_stub/counts HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"DELETE /_stub/counts HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"GET /_stub/counts?again HTTP/1.1\r\nHost: a\r\n\r\n"
                           b"PUT /_stub/counts HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    answers = responses(transport.written)
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 405]
    first = answers[1][2]
    assert first["service"] == "mta"
    assert first["http"]["requests"] == 1
    assert first["smtp"]["messages"] == 0
    assert answers[3][2]["http"]["requests"] == 0
    assert answers[3][2]["http"]["connections"] == 0


def test_connection_close_and_bad_requests_close() -> None:
    service = stub_http.StubService("tls")
    protocol, transport = session(service)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert transport.closed
    assert responses(transport.written)[0][1]["connection"] == "close"
    protocol, transport = session(service)
    protocol.data_received(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert transport.closed
    assert responses(transport.written)[0][0] == 400
    assert service.http.requests == 1


def test_head_gets_no_body() -> None:
    service = stub_http.StubService("tls")
    protocol, transport = session(service)
    protocol.data_received(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, rest = bytes(transport.written).partition(b"\r\n\r\n")
    assert b"Content-Length: " in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


# --- SMTP stub counts -------------------------------------------------------------------------


def smtp_session(stats: stub_smtp.StubStats, *, expect_proxy: bool = True
                 ) -> tuple[stub_smtp.StubSmtp, RecordingTransport]:
    protocol = stub_smtp.StubSmtp("mta.demo", stats, expect_proxy=expect_proxy)
    transport = RecordingTransport(("127.0.0.1", 50000))
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def test_smtp_stub_counts_by_the_proxy_header_address() -> None:
    stats = stub_smtp.StubStats()
    health_check, _ = smtp_session(stats)
    health_check.connection_lost(None)
    protocol, transport = smtp_session(stats)
    protocol.data_received(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 587\r\nEHLO x\r\n"
                           b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    protocol.data_received(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    text = transport.written.decode()
    assert "your address is 203.0.113.7:40000" in text
    assert "queued by mta.demo" in text
    assert "client 203.0.113.7:40000" in text
    snapshot = stats.snapshot()
    assert snapshot["sessions"] == 2  # the health check's connection too
    assert snapshot["client_sessions"] == 1
    assert snapshot["messages"] == 1
    assert snapshot["sessions_by_client"] == {"203.0.113.7": 1}
    assert snapshot["messages_by_client"] == {"203.0.113.7": 1}
    assert snapshot["message_bytes"] == stats.messages[0].size
    json.dumps(snapshot)
    stats.reset()
    assert stats.snapshot()["sessions"] == 0
    assert stats.snapshot()["messages_by_client"] == {}


def test_smtp_stub_without_proxy_counts_the_peer() -> None:
    stats = stub_smtp.StubStats()
    _, transport = smtp_session(stats, expect_proxy=False)
    assert transport.written.startswith(b"220 mta.demo")
    assert stats.session_clients == {"127.0.0.1": 1}
