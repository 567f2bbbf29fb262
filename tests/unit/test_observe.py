"""Access log formatting and the atomic-chunk writing that keeps workers' lines whole."""

from __future__ import annotations

import json
import os
import select

import pytest

from ingress.observe import AccessLog, quote


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
