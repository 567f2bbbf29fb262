"""loadtest/bench_targets.py: the reference floor's command line, and the access log's ends."""

from __future__ import annotations

from pathlib import Path

from loadtest.bench_targets import access_log_ends, floor_setup


def test_floor_setup_names_and_pins() -> None:
    bare = floor_setup(30000, 30001, {1}, 0.0)
    burned = floor_setup(30002, 30001, {1}, 8.0)
    assert (bare.name, burned.name) == ("floor", "floor+8us")
    assert bare.argv[:3] == ["taskset", "-c", "1"]
    assert bare.argv[-6:] == ["--port", "30000", "--backend-port", "30001", "--burn-us", "0"]
    tls = floor_setup(30003, 30001, {1}, 0.0, Path("/results/certs"))
    assert tls.argv[-2:] == ["--tls-cert", "/results/certs/bench.pem"]


def test_access_log_ends_count_rejections_by_reason() -> None:
    lines = [
        b'127.0.0.1:1 [22/Nov/2026:16:22:39.447] https a/b 0/0/0/0/1 200 2 - - ---- '
        b'"GET / HTTP/1.1" end=ok worker=0 tls=TLSv1.3 sni=-\n',
        b'ts=2026-11-22T16:22:39.447Z kind=http listener=https client=127.0.0.1:2 status=0 '
        b'end=rejected reason=tls-handshake-aborted detail="connection closed" worker=0\n',
        b'ts=2026-11-22T16:22:39.448Z kind=http listener=https client=127.0.0.1:3 status=0 '
        b'end=rejected reason=tls-handshake-failed detail="http request" worker=0\n',
        b'no end field here\n',
    ]
    assert access_log_ends(lines) == {
        "ok": 1, "rejected:tls-handshake-aborted": 1, "rejected:tls-handshake-failed": 1}
