"""loadtest/bench_targets.py: the reference floor's command line, the access log's ends, and
waiting for a proxy to be ready."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import load
from loadtest.bench_runner import ingress_variants, s_time_argv
from loadtest.bench_scenarios import READINESS_PATH, Layout, Run
from loadtest.bench_targets import (
    HAPROXY_READINESS,
    JEMALLOC,
    Child,
    access_log_ends,
    floor_setup,
    ingress_setup,
    wait_ready,
)


def test_floor_setup_names_and_pins() -> None:
    bare = floor_setup(30000, 30001, {1}, 0.0)
    burned = floor_setup(30002, 30001, {1}, 8.0)
    assert (bare.name, burned.name) == ("floor", "floor+8us")
    assert bare.argv[:3] == ["taskset", "-c", "1"]
    assert bare.argv[-6:] == ["--port", "30000", "--backend-port", "30001", "--burn-us", "0"]
    tls = floor_setup(30003, 30001, {1}, 0.0, Path("/results/certs"))
    assert tls.argv[-2:] == ["--tls-cert", "/results/certs/bench.pem"]
    epoll = floor_setup(30004, 30001, {1}, 8.0, tcp=True, epoll=True)
    assert epoll.name == "floor-epoll+8us"
    assert epoll.argv[-2:] == ["--tcp", "--epoll"]


def test_a_jemalloc_ingress_is_preloaded_and_kept_apart_from_the_glibc_one(
        tmp_path: Path) -> None:
    plain = ingress_setup(tmp_path, 30010, 30001, {1}, 1, "file", http=True)
    preloaded = ingress_setup(tmp_path, 30011, 30001, {1}, 1, "file", http=True,
                              allocator="jemalloc", name="mta-ingress+jemalloc")
    assert (plain.name, preloaded.name) == ("mta-ingress", "mta-ingress+jemalloc")
    assert "env" not in plain.argv
    # taskset, then env sets the preload for the ingress alone, then the ingress itself
    assert preloaded.argv[:5] == ["taskset", "-c", "1", "env", f"LD_PRELOAD={JEMALLOC}"]
    assert preloaded.argv[5:] == [*plain.argv[3:-1], str(preloaded.config_path)]
    # both in one run (--allocator both): their files must not collide
    assert plain.config_path != preloaded.config_path
    assert plain.access_log is not None
    assert preloaded.access_log is not None
    assert plain.access_log != preloaded.access_log
    assert '"127.0.0.1:30011"' in preloaded.config_path.read_text()
    assert '"127.0.0.1:30010"' in plain.config_path.read_text()


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


def child(tmp_path: Path, code: str) -> Child:
    return Child("proxy-x", [sys.executable, "-c", code], stop_signal=signal.SIGTERM,
                 death_signal=signal.SIGTERM, stdout=subprocess.DEVNULL,
                 stderr=tmp_path / "proxy-x.stderr")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_wait_ready_says_why_a_proxy_that_exits_is_not_ready(tmp_path: Path) -> None:
    exiting = child(tmp_path, "import sys; print('bad config', file=sys.stderr); sys.exit(3)")
    with pytest.raises(RuntimeError, match="proxy-x exited 3:\nbad config"):
        wait_ready(exiting, free_port(), ingress=False)
    exiting.stop()


def test_wait_ready_waits_for_the_port_and_the_ingress_ready_line(tmp_path: Path) -> None:
    port = free_port()
    listening = child(tmp_path, (
        "import socket, sys, time\n"
        f"listener = socket.create_server(('127.0.0.1', {port}))\n"
        "time.sleep(0.2)\n"
        "print('msg=\"ready\"', file=sys.stderr, flush=True)\n"
        "time.sleep(30)\n"))
    try:
        wait_ready(listening, port, ingress=True)
        assert 'msg="ready"' in listening.stderr_tail()
    finally:
        listening.stop()


def test_s_time_asks_for_the_readiness_path_only_in_the_request_scenarios() -> None:
    layout = Layout({0}, {1})
    bare = s_time_argv(Run("tls-handshake-ecdsa", 1, layout), 30020)
    finished = s_time_argv(Run("tls-request-rsa", 1, layout), 30020)
    assert bare[:3] == ["taskset", "-c", "0"]  # the load core
    assert bare[3:] == [load.OPENSSL, "s_time", "-new", "-connect", "127.0.0.1:30020"]
    assert finished[3:] == [load.OPENSSL, "s_time", "-new", "-www", READINESS_PATH,
                            "-connect", "127.0.0.1:30020"]
    # and both proxies answer that path themselves: HAProxy's configuration says so
    assert f"path_beg {READINESS_PATH}" in HAPROXY_READINESS


def test_the_tcp_listener_names_its_io_engine(tmp_path: Path) -> None:
    uvloop = ingress_setup(tmp_path, 30020, 30001, {1}, 1, "file", name="mta-ingress+uvloop",
                           io_engine="uvloop")
    default = ingress_setup(tmp_path, 30021, 30001, {1}, 1, "file")
    assert 'io_engine = "uvloop"' in uvloop.config_path.read_text()
    assert 'io_engine = "epoll"' in default.config_path.read_text()
    assert uvloop.config_path != default.config_path


def test_ingress_variants_compare_the_first_and_add_the_others_as_references() -> None:
    assert ingress_variants("glibc", "uvloop") == [("mta-ingress", "glibc", "uvloop")]
    assert ingress_variants("jemalloc", "epoll") == [("mta-ingress", "jemalloc", "epoll")]
    assert ingress_variants("both", "both") == [
        ("mta-ingress", "glibc", "epoll"), ("mta-ingress+jemalloc", "jemalloc", "epoll"),
        ("mta-ingress+uvloop", "glibc", "uvloop")]
