"""Access log formatting and the atomic-chunk writing that keeps workers' lines whole."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingress.observe import PIPE_BUF, AccessLog, TlsFields, quote


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


def test_http_request_line_has_haproxy_httplog_layout() -> None:
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog("logfmt", fd=write_fd)
        for _ in range(2):  # the second line uses the cached date prefix
            log.http_request(client="203.0.113.5:40000", listener="http",
                             backend="event-tracker-http", server="10.0.0.7:80", duration_ms=12,
                             status=200, body_bytes=345, method=b"GET",
                             target=b"/click/abc?x=1", version=b"1.1", end="ok", worker=0)
        log.flush()
        lines = read_all(read_fd).decode().splitlines()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    pattern = re.compile(
        r'203\.0\.113\.5:40000 \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3}\] http '
        r'event-tracker-http/10\.0\.0\.7:80 -1/-1/-1/-1/12 200 345 - - ---- '
        r'"GET /click/abc\?x=1 HTTP/1\.1" end=ok worker=0')
    assert len(lines) == 2
    assert all(pattern.fullmatch(line) for line in lines), lines


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_http_request_of_an_https_connection_carries_its_tls_fields(log_format: str) -> None:
    """The same TlsFields on every request of a connection, in both layouts; a server name
    that logfmt cannot leave bare is quoted."""
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog(log_format, fd=write_fd)
        for fields in (TlsFields("TLSv1.3", "mx.example.org"), TlsFields("TLSv1.2", "-"),
                       TlsFields("TLSv1.3", "odd name")):
            for _ in range(2):
                log.http_request(client="-", listener="https", backend="b", server="s",
                                 duration_ms=0, status=200, body_bytes=0, method=b"GET",
                                 target=b"/", version=b"1.1", end="ok", worker=0, tls=fields)
        log.flush()
        lines = read_all(read_fd).decode().splitlines()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    expected = [("TLSv1.3", "mx.example.org"), ("TLSv1.2", "-"), ("TLSv1.3", "odd name")]
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [(record["tls"], record["sni"]) for record in records] == [
            pair for pair in expected for _ in range(2)]
    else:
        assert [line.split(" worker=0")[1] for line in lines] == [
            text for text in (" tls=TLSv1.3 sni=mx.example.org", " tls=TLSv1.2 sni=-",
                              ' tls=TLSv1.3 sni="odd name"') for _ in range(2)]


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
    read_fd, write_fd = os.pipe()
    try:
        log = AccessLog("logfmt", fd=write_fd)
        log.http_request(client="-", listener="http", backend="b", server="s", duration_ms=0,
                         status=400, body_bytes=0, method=b"GET", target=target,
                         version=b"1.1", end="bad thing", worker=0)
        log.flush()
        line = read_all(read_fd).decode()
    finally:
        os.close(read_fd)
        os.close(write_fd)
    request = f"GET {target[:200].decode('latin-1')} HTTP/1.1"
    assert f" {json.dumps(request)} " in line
    assert line.rstrip("\n").endswith(' end="bad thing" worker=0')


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
