"""Access log formatting and the atomic-chunk writing that keeps workers' lines whole."""

from __future__ import annotations

import calendar
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingress.ops.logs import PIPE_BUF, AccessLog, TlsFields, quote
from ingress.proxy.tcp import termination_state
from tests.haproxy_log import CONNECTION_ERROR, HTTPLOG, TCPLOG, extras, parse


@pytest.mark.parametrize(("value", "expected"), [
    ("smtp587", "smtp587"),
    ("127.0.0.1:25", "127.0.0.1:25"),
    ("", '""'),
    ("two words", '"two words"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a=b", '"a=b"'),
    ("tab\there", '"tab\\there"'),
])
def test_logfmt_quoting(value: str, expected: str) -> None:
    assert quote(value) == expected


def read_all(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def test_lines_are_written_in_whole_chunks_under_pipe_buf() -> None:
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog("logfmt", fd=write_fd)
        for index in range(200):
            log.record({"kind": "tcp", "n": index, "detail": "x" * 100})
        log.flush()
        data = read_all(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    lines = data.decode().splitlines()
    assert [line.split(" n=")[1].split()[0] for line in lines] == [str(i) for i in range(200)]
    assert all(line.startswith("ts=") and line.endswith("x" * 100) for line in lines)


def test_json_format() -> None:
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog("json", fd=write_fd)
        log.record({"kind": "tcp", "client": "[::1]:4000", "bytes_in": 12})
        log.flush()
        line = read_all(read_fd).decode()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    record = json.loads(line)
    assert record["client"] == "[::1]:4000"
    assert record["bytes_in"] == 12
    assert record["ts"].endswith("Z")


def _written(log_format: str, write: Callable[[AccessLog], None], *,
             log_normal: bool = True) -> list[str]:
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog(log_format, fd=write_fd, log_normal=log_normal)
        write(log)
        log.flush()
        return read_all(read_fd).decode().splitlines()
    finally:
        os.close(read_fd)
        os.close(write_fd)


def _request(log: AccessLog, **changes: Any) -> None:
    fields: dict[str, Any] = {
        "client": "203.0.113.5:40000", "listener": "http", "backend": "event-tracker-http",
        "server": "10.0.0.7:80", "request_ms": 3, "queue_ms": 0, "connect_ms": 1,
        "response_ms": 7, "active_ms": 12, "status": 200, "bytes_read": 345,
        "termination": "----", "backend_connections": 4, "server_connections": 2,
        "retries": 1, "method": b"GET", "target": b"/click/abc?x=1", "version": b"1.1",
        "end": "ok", "worker": 0}
    log.http_request(**{**fields, **changes})


def test_http_request_line_is_haproxy_httplog_field_for_field() -> None:
    def write(log: AccessLog) -> None:
        log.connection_opened("http")
        log.connection_opened("http")
        log.connection_opened("smtp25")
        for _ in range(2):  # the second line uses the cached date prefix
            _request(log)
    lines = _written("logfmt", write)
    assert len(lines) == 2
    for line in lines:
        fields = parse(HTTPLOG, line)
        assert fields == {**fields, "client_ip": "203.0.113.5", "client_port": "40000",
                          "frontend": "http", "backend": "event-tracker-http",
                          "server": "10.0.0.7:80", "time_request": "3", "time_queue": "0",
                          "time_connect": "1", "time_response": "7", "time_active": "12",
                          "status": "200", "bytes_read": "345", "request_cookie": "-",
                          "response_cookie": "-", "termination_state": "----",
                          "actconn": "3", "feconn": "2", "beconn": "4", "srv_conn": "2",
                          "retries": "1", "srv_queue": "0", "backend_queue": "0",
                          "request": "GET /click/abc?x=1 HTTP/1.1"}
        assert line.endswith('"GET /click/abc?x=1 HTTP/1.1" end=ok worker=0')


def test_accept_date_is_when_the_request_began() -> None:
    """[%tr] is the request's start: the line's moment less its active time."""
    before = time.time()
    lines = _written("json", lambda log: _request(log, active_ms=60_000))
    record = json.loads(lines[0])
    began = calendar.timegm(time.strptime(record["accept_date"][:-4], "%d/%b/%Y:%H:%M:%S"))
    assert before - 61 <= began <= before - 59


def test_json_has_the_text_layout_fields() -> None:
    [text] = _written("logfmt", _request)
    [line] = _written("json", _request)
    record = json.loads(line)
    fields = parse(HTTPLOG, text)
    for name in ("frontend", "backend", "server", "time_request", "time_queue",
                 "time_connect", "time_response", "time_active", "status", "bytes_read",
                 "termination_state", "actconn", "feconn", "beconn", "srv_conn", "retries",
                 "srv_queue", "backend_queue", "request"):
        assert str(record[name]) == fields[name], name
    assert record["client"] == "203.0.113.5:40000"
    assert (record["end"], record["worker"], record["kind"]) == ("ok", 0, "http")


def test_https_frontend_is_marked_as_haproxy_marks_it() -> None:
    [line] = _written("logfmt", lambda log: _request(
        log, listener="https", tls=TlsFields("TLSv1.3", "mx.example.org")))
    assert parse(HTTPLOG, line)["frontend"] == "https~"
    assert line.endswith(" worker=0 tls=TLSv1.3 sni=mx.example.org")


def test_rejection_is_a_badreq_line() -> None:
    def write(log: AccessLog) -> None:
        log.connection_opened("http")
        log.http_rejection(listener="http", client="::1:5", status=400,
                           reason="bad-request-line", detail="no space", worker=1,
                           active_ms=2, bytes_read=90)
    [line] = _written("logfmt", write)
    fields = parse(HTTPLOG, line)
    assert (fields["backend"], fields["server"], fields["request"]) == (
        "http", "<NOSRV>", "<BADREQ>")
    assert (fields["time_request"], fields["time_queue"], fields["time_connect"],
            fields["time_response"], fields["time_active"]) == ("-1", "-1", "-1", "-1", "2")
    assert (fields["status"], fields["termination_state"], fields["actconn"]) == (
        "400", "PR--", "1")
    assert extras(line) == {"end": "rejected", "reason": "bad-request-line", "worker": "1",
                            "detail": "no space"}


def test_connection_refused_before_a_request_is_haproxys_error_line() -> None:
    [line] = _written("logfmt", lambda log: log.http_rejection(
        listener="https", client="::1:4000", status=0, reason="tls-handshake-failed",
        detail="wrong version number", worker=0))
    fields = parse(CONNECTION_ERROR, line)
    assert (fields["client_ip"], fields["frontend"], fields["bind"], fields["message"]) == (
        "::1", "https", "1", "SSL handshake failure")
    assert extras(line)["reason"] == "tls-handshake-failed"


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_tcp_session_is_haproxy_tcplog_field_for_field(log_format: str) -> None:
    def write(log: AccessLog) -> None:
        log.connection_opened("smtp25")
        log.tcp_session(frontend="smtp25", client="198.51.100.2:5000", backend="mta-smtp",
                        server="10.0.0.9:25", queue_ms=0, connect_ms=2, total_ms=1500,
                        bytes_out=430, bytes_in=2000, termination="--",
                        backend_connections=3, server_connections=1, retries=0,
                        end="closed", worker=1, detail="")
    [line] = _written(log_format, write)
    if log_format == "json":
        record = json.loads(line)
        assert (record["time_queue"], record["time_connect"], record["time_total"],
                record["bytes_read"], record["termination_state"], record["actconn"],
                record["beconn"], record["bytes_in"]) == (0, 2, 1500, 430, "--", 1, 3, 2000)
        return
    fields = parse(TCPLOG, line)
    assert fields == {**fields, "client_ip": "198.51.100.2", "frontend": "smtp25",
                      "backend": "mta-smtp", "server": "10.0.0.9:25", "time_queue": "0",
                      "time_connect": "2", "time_total": "1500", "bytes_read": "430",
                      "termination_state": "--", "actconn": "1", "feconn": "1",
                      "beconn": "3", "srv_conn": "1", "retries": "0"}
    assert extras(line) == {"end": "closed", "bytes_in": "2000", "worker": "1"}


@pytest.mark.parametrize(("end", "connected", "timed_out", "state"), [
    ("closed", True, False, "--"),
    ("client-closed", True, False, "--"),
    ("server-closed", True, False, "--"),
    ("client-closed", False, False, "CC"),
    ("client-reset", True, False, "CD"),
    ("server-reset", True, False, "SD"),
    ("no-backend", False, False, "SC"),
    ("no-backend", False, True, "sC"),
    ("idle-timeout", True, False, "cD"),
    ("shutdown-grace-expired", True, False, "KD"),
])
def test_tcp_termination_states(end: str, connected: bool, timed_out: bool,
                                state: str) -> None:
    assert termination_state(end, connected, timed_out) == state


@settings(max_examples=200)
@example(b"/plain?x=1")
@example(b'/q"uote')
@example(b"/back\\slash")
@example(b"/caf\xe9")
@example(b"/tab\there")
@example(b"/")
@example(b"/" + b"x" * 300)
@given(st.binary(max_size=300) | st.text("/?=&%.~-_ab\"\\\x7f", max_size=300).map(str.encode))
def test_http_request_line_quotes_the_request_as_json(target: bytes) -> None:
    [line] = _written("logfmt", lambda log: _request(log, target=target, status=400,
                                                     end="bad thing"))
    request = f"GET {target[:200].decode('latin-1')} HTTP/1.1"
    assert f" {json.dumps(request)} " in line
    assert line.endswith(' end="bad thing" worker=0')
    assert json.loads('"' + parse(HTTPLOG, line)["request"] + '"') == request


@given(st.lists(st.text(alphabet=st.sampled_from("ab é\"=") , max_size=3000)
                .filter(lambda line: "\n" not in line), max_size=40))
def test_flush_cuts_writes_at_line_ends_within_pipe_buf(lines: list[str]) -> None:
    """Every write holds whole lines and at most PIPE_BUF bytes, unless it is one longer line;
    together the writes are every line, in order."""
    # A SOCK_SEQPACKET pair keeps each write() a record of its own, as it was written; a
    # thread reads them while flush writes, so no buffer fills.
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writes: list[bytes] = []

    def receive() -> None:
        while record := receiver.recv(1 << 20):
            writes.append(record)

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        log = AccessLog("logfmt", fd=sender.fileno())
        for line in lines:
            log._lines.append(line)
        log.flush()
    finally:
        sender.shutdown(socket.SHUT_WR)
        reader.join(timeout=10)
        sender.close()
        receiver.close()
    assert not reader.is_alive()
    expected = [(line + "\n").encode("utf-8") for line in lines]
    assert b"".join(writes) == b"".join(expected)
    for write in writes:
        assert write.endswith(b"\n")
        assert len(write) <= PIPE_BUF or write.count(b"\n") == 1
    # a write is never cut earlier than needed: the next line would not have fitted
    taken = 0
    for write in writes[:-1]:
        taken += write.count(b"\n")
        assert len(write) + len(expected[taken]) > PIPE_BUF


def _egress_line(log: AccessLog, **changes: object) -> None:
    fields: dict[str, object] = dict(
        listener="egress-socks", client="10.1.2.3:40000", user="kumo mta",
        source="203.0.113.10", destination="198.51.100.25:25", bytes_to_remote=1200,
        bytes_to_client=340, connect_ms=12, duration_ms=800, end="closed", reason="",
        worker=0, detail="")
    fields.update(changes)
    log.egress_session(**fields)  # type: ignore[arg-type]


def test_egress_session_line_in_logfmt() -> None:
    [line] = _written("logfmt", _egress_line)
    assert line.startswith("ts=")
    assert (" kind=egress listener=egress-socks client=10.1.2.3:40000 user=\"kumo mta\" "
            "source=203.0.113.10 destination=198.51.100.25:25 bytes_to_remote=1200 "
            "bytes_to_client=340 connect_ms=12 duration_ms=800 end=closed worker=0") in line
    assert "reason=" not in line
    assert "detail=" not in line


def test_egress_refusal_line_in_json_carries_reason_and_detail() -> None:
    [line] = _written("json", lambda log: _egress_line(
        log, source="-", destination="127.0.0.1:25", end="refused",
        reason="destination-denied", detail="destination 127.0.0.1:25", connect_ms=-1))
    record = json.loads(line)
    assert (record["kind"], record["end"], record["reason"], record["source"]) == (
        "egress", "refused", "destination-denied", "-")
    assert record["detail"] == "destination 127.0.0.1:25"
    assert record["connect_ms"] == -1


def _tcp(log: AccessLog, termination: str, retries: int = 0) -> None:
    log.tcp_session(frontend="smtp25", client="198.51.100.2:5000", backend="mta-smtp",
                    server="10.0.0.9:25", queue_ms=0, connect_ms=2, total_ms=1500,
                    bytes_out=430, bytes_in=2000, termination=termination,
                    backend_connections=3, server_connections=1, retries=retries,
                    end="closed" if termination == "--" else "client-aborted", worker=1,
                    detail="")


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_log_normal_off_writes_only_what_haproxy_dontlog_normal_keeps(log_format: str) -> None:
    def write(log: AccessLog) -> None:
        _request(log, retries=0, target=b"/normal")  # dropped: 2xx, "----", no retry
        _request(log, retries=0, status=404, target=b"/not-found")  # dropped: a 4xx is normal
        _request(log, retries=0, termination="LR--", target=b"/local")  # dropped: answered here
        _request(log, retries=0, status=503, target=b"/five-oh-three")
        _request(log, retries=0, status=-1, termination="CD--", target=b"/client-left")
        _request(log, retries=1, target=b"/retried")
        _request(log, retries=0, termination="sH--", status=504, target=b"/timeout")
        log.http_rejection(listener="http", client="::1:5", status=400,
                           reason="bad-request", detail="no Host", worker=0)
        _tcp(log, "--")  # dropped
        _tcp(log, "--", retries=1)
        _tcp(log, "CD")
        _egress_line(log)  # egress sessions are the sending addresses' audit trail: kept
    lines = _written(log_format, write, log_normal=False)
    text = "\n".join(lines)
    assert len(lines) == 8
    for kept in ("/five-oh-three", "/client-left", "/retried", "/timeout", "BADREQ",
                 "egress-socks"):
        assert kept in text
    for dropped in ("/normal", "/not-found", "/local"):
        assert dropped not in text
    tcp_terminations = [line for line in lines if "mta-smtp" in line]
    assert len(tcp_terminations) == 2


def test_log_normal_on_writes_every_line() -> None:
    def write(log: AccessLog) -> None:
        _request(log, retries=0)
        _tcp(log, "--")
    assert len(_written("logfmt", write)) == 2
