"""loadtest/bench_egress.py and its load and sink: the three configurations (the ingress's read
back by its own loader), the clients' openings read back by the project's codecs, the figures
read from /proc, the ratios and verdicts, and the sink's SMTP answers."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from ingress.config import load as load_config
from ingress.protocol import proxy_protocol, socks5
from loadtest import bench_egress, bench_egress_load, bench_egress_sink, load, procstat
from loadtest.bench import parse_args, parse_levels
from loadtest.bench_egress import (
    ingress_egress_config,
    per_session_bytes,
    stat_times,
    stderr_alarms,
    summarise,
    summary_text,
)
from loadtest.bench_egress_load import answer_error, answer_length, message_chunks, openings
from loadtest.bench_runner import PortPool
from loadtest.bench_scenarios import Layout, Measurement, Run, plan

SINK = ("127.0.0.200", 25000)
LAYOUT = Layout({0}, {1})


# --- configurations ----------------------------------------------------------------------------


def test_the_ingress_configuration_loads_with_both_listeners(tmp_path: Path) -> None:
    path = tmp_path / "ingress.toml"
    path.write_text(ingress_egress_config(24001, 24002, 25000))
    config = load_config(path, environ={})
    socks, forward = config.listeners["egress-socks"], config.listeners["egress-forward"]
    assert (socks.mode, forward.mode) == ("socks5", "forward")
    for listener in (socks, forward):
        assert listener.egress_sources == ("127.0.0.5", "127.0.0.7")
        assert listener.egress_ports == (25000,)
        assert listener.allow_clients == ("127.0.0.1/32",)
        assert listener.deny_destinations == ("10.0.0.0/8",)
    assert config.workers == 1
    assert config.timeouts.connect == 5.0
    assert config.timeouts.tcp_idle == 60.0


def test_dante_configuration() -> None:
    text = bench_egress.dante_config(24000, 25000)
    assert "internal: 127.0.0.1 port = 24000\n" in text
    assert "external: 127.0.0.7\n" in text
    assert "clientmethod: none\n" in text
    assert "socksmethod: none\n" in text
    assert "user.privileged: root\n" in text
    assert "user.unprivileged: nobody\n" in text
    assert "to: 127.0.0.200/32 port = 25000" in text
    assert "command: connect" in text
    assert "{" in text
    assert "{{" not in text


def test_haproxy_forward_configuration() -> None:
    text = bench_egress.haproxy_forward_config(24000, 9990, "descriptor limit")
    assert "bind 127.0.0.1:24000 accept-proxy\n" in text
    assert "source 0.0.0.0 usesrc clientip\n" in text
    assert "server mx 0.0.0.0\n" in text
    assert "nbthread 1\n" in text
    assert "maxconn 9990  # descriptor limit\n" in text
    assert "maxconn 20000\n" in bench_egress.haproxy_forward_config(24000, 20000)


def test_setups_pin_every_proxy_and_share_the_ingress_configuration(tmp_path: Path) -> None:
    setups = bench_egress.egress_setups(tmp_path, PortPool(31000), 25000, {1}, "file")
    assert list(setups) == list(bench_egress.TARGET_NAMES)
    for setup in setups.values():
        assert setup.argv[:3] == ["taskset", "-c", "1"]
        assert setup.config_path.exists()
    assert setups["dante"].argv[3:5] == ["/usr/sbin/danted", "-f"]
    assert "-N" in setups["dante"].argv
    assert setups["ingress-socks5"].port == setups["ingress-socks5-bind"].port
    assert setups["ingress-socks5"].port != setups["ingress-forward"].port
    assert setups["ingress-socks5"].config_path == setups["ingress-forward"].config_path
    assert setups["ingress-socks5-bind"].access_log is not None
    assert "ingress-socks5-bind-access-{tag}" in setups["ingress-socks5-bind"].access_log
    assert setups["haproxy-forward"].access_log is None
    devnull = bench_egress.egress_setups(tmp_path, PortPool(31100), 25000, None, "devnull")
    assert devnull["ingress-forward"].access_log is None
    assert devnull["dante"].argv[0] == "/usr/sbin/danted"
    assert "option tcplog" not in setups["haproxy-forward"].config_path.read_text()
    (tmp_path / "logged").mkdir()
    logged = bench_egress.egress_setups(tmp_path / "logged", PortPool(31200), 25000, None,
                                        "file", "file")
    text = logged["haproxy-forward"].config_path.read_text()
    assert "log stdout format raw local0" in text
    assert "option tcplog" in text
    assert "dontlog-normal" not in text
    assert "haproxy-forward-access-{tag}" in str(logged["haproxy-forward"].access_log)


# --- the clients' openings ---------------------------------------------------------------------


def test_connect_opening_is_a_greeting_and_a_connect() -> None:
    [plan_] = openings("socks5-connect", SINK, ("127.0.0.5", "127.0.0.7"))
    greeting, connect = plan_.messages
    assert plan_.replies
    parsed = socks5.parse_greeting(greeting)
    assert parsed is not None
    assert parsed[0].methods == (socks5.METHOD_NO_AUTH,)
    request = socks5.parse_request(connect)
    assert request is not None
    assert (request[0].command, request[0].host, request[0].port) == (
        socks5.CMD_CONNECT, *SINK)


def test_bind_opening_names_each_source_in_turn() -> None:
    plans = openings("socks5-bind", SINK, ("127.0.0.5", "127.0.0.7"))
    assert [p.source for p in plans] == ["127.0.0.5", "127.0.0.7"]
    for plan_ in plans:
        _, bind, connect = plan_.messages
        bind_request = socks5.parse_request(bind)
        connect_request = socks5.parse_request(connect)
        assert bind_request is not None
        assert connect_request is not None
        assert (bind_request[0].command, bind_request[0].host, bind_request[0].port) == (
            socks5.CMD_BIND, plan_.source, 0)
        assert connect_request[0].command == socks5.CMD_CONNECT


def test_forward_opening_is_one_v2_header_without_reply() -> None:
    plans = openings("proxy-v2", SINK, ("127.0.0.5", "127.0.0.7"))
    for plan_ in plans:
        [header] = plan_.messages
        assert not plan_.replies
        parsed = proxy_protocol.parse_header(header)
        assert parsed is not None
        assert parsed[0].client_address is not None
        assert parsed[0].client_address[0] == plan_.source
        assert parsed[0].destination == SINK
        assert parsed[1] == len(header)


def test_unknown_protocol_and_missing_source_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        bench_egress_load.opening("http", SINK, "127.0.0.5")
    with pytest.raises(ValueError, match="names its source"):
        bench_egress_load.opening("socks5-bind", SINK, None)


@pytest.mark.parametrize(("data", "first", "length"), [
    (b"\x05", True, None),
    (b"\x05\x00", True, 2),
    (b"\x05\x00\x00\x01\x7f\x00", False, None),
    (socks5.encode_reply(socks5.REP_SUCCEEDED, ("127.0.0.7", 40000)), False, 10),
    (socks5.encode_reply(socks5.REP_SUCCEEDED, ("127.0.0.7", 40000)) + b"220 x\r\n", False, 10),
    (socks5.encode_reply(socks5.REP_SUCCEEDED, ("::1", 40000)), False, 22),
    (socks5.encode_reply(socks5.REP_SUCCEEDED, ("mx.example", 25)), False, 7 + 10),
])
def test_answer_length(data: bytes, first: bool, length: int | None) -> None:
    assert answer_length(data, first) == length


def test_answer_length_of_an_unknown_address_type() -> None:
    with pytest.raises(ValueError, match="address type"):
        answer_length(b"\x05\x00\x00\x09\x00\x00", False)


@pytest.mark.parametrize(("answer", "first", "error"), [
    (b"\x05\x00", True, ""),
    (b"\x05\xff", True, "socks-method-255"),
    (b"\x04\x00", True, "socks-not-socks5"),
    (socks5.encode_reply(socks5.REP_SUCCEEDED), False, ""),
    (socks5.encode_reply(socks5.REP_NOT_ALLOWED), False, "socks-reply-2"),
])
def test_answer_error(answer: bytes, first: bool, error: str) -> None:
    assert answer_error(answer, first) == error


class ClientTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


REPLY = socks5.encode_reply(socks5.REP_SUCCEEDED, ("127.0.0.7", 40000))


def client_session(protocol: str, *, hold: bool = False) -> tuple[
        bench_egress_load._Session, ClientTransport, asyncio.Future[str]]:
    loop = asyncio.new_event_loop()
    done: asyncio.Future[str] = loop.create_future()
    plan_ = openings(protocol, SINK, ("127.0.0.5",))[0]
    session = bench_egress_load._Session(plan_, done, hold)
    transport = ClientTransport()
    session.connection_made(transport)  # type: ignore[arg-type]
    loop.close()
    return session, transport, done


def test_client_session_waits_for_each_socks5_answer_then_quits() -> None:
    session, transport, done = client_session("socks5-bind")
    greeting, bind, connect = openings("socks5-bind", SINK, ("127.0.0.5",))[0].messages
    assert transport.written == [greeting]
    session.data_received(b"\x05")
    session.data_received(b"\x00")
    assert transport.written == [greeting, bind]
    session.data_received(REPLY[:4])
    session.data_received(REPLY[4:])
    assert transport.written[-1] == connect
    session.data_received(REPLY + b"220 sink")  # the reply and a banner in pieces
    session.data_received(b" ESMTP\r\n")
    assert transport.written[-1] == b"QUIT\r\n"
    assert not done.done()
    session.data_received(b"221 bye\r\n")
    assert done.result() == "ok"
    assert transport.closed


def test_client_session_forward_writes_its_header_and_holds_at_the_banner() -> None:
    session, transport, done = client_session("proxy-v2", hold=True)
    assert len(transport.written) == 1
    session.data_received(b"220 sink ESMTP\r\n")
    assert done.result() == "ok"
    assert not transport.closed
    session.quit()
    assert transport.written[-1] == b"QUIT\r\n"
    session.data_received(b"221 bye\r\n")
    assert transport.closed


@pytest.mark.parametrize(("answers", "outcome"), [
    ([b"\x05\xff"], "socks-method-255"),
    ([b"\x05\x00", socks5.encode_reply(socks5.REP_CONNECTION_REFUSED)], "socks-reply-5"),
    ([b"\x05\x00", REPLY, b"554 no\r\n"], "bad-banner"),
    ([b"\x05\x00", REPLY, b"220 ok\r\n", b"500 what\r\n"], "bad-quit-reply"),
])
def test_client_session_outcomes(answers: list[bytes], outcome: str) -> None:
    session, transport, done = client_session("socks5-connect")
    for answer in answers:
        session.data_received(answer)
    assert done.result() == outcome
    assert transport.closed


@pytest.mark.parametrize(("answers", "outcome"), [
    ([], "closed-in-negotiation"), ([b"\x05\x00", REPLY], "closed-before-banner"),
    ([b"\x05\x00", REPLY, b"220 ok\r\n"], "closed-before-221"),
])
def test_client_session_closed_early(answers: list[bytes], outcome: str) -> None:
    session, _, done = client_session("socks5-connect")
    for answer in answers:
        session.data_received(answer)
    session.connection_lost(None)
    assert done.result() == outcome
    assert session.lost


@pytest.mark.parametrize(("size", "chunk"), [(32 << 20, 1 << 20), (1000, 64), (5, 1 << 20),
                                             (1 << 20, 1 << 20)])
def test_message_chunks_add_up_and_end_with_the_terminator(size: int, chunk: int) -> None:
    body, count, last = message_chunks(size, chunk)
    assert len(body) * count + len(last) == size
    assert last.endswith(b"\r\n.\r\n")
    whole = bytes(body) * min(count, 3) + last
    assert b"\n." not in whole[:-3]  # no line of the body starts with a dot


def test_message_chunks_refuse_a_message_smaller_than_its_terminator() -> None:
    with pytest.raises(ValueError, match="terminator"):
        message_chunks(4, 1024)


# --- figures -----------------------------------------------------------------------------------


def test_stat_times_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    fields = ["S", "1", "2", "3", "0", "-1", "4194560", "10", "0", "0", "0", "150", "250",
              "7", "9", "20", "0", "1", "0", "100"]
    text = "1234 (danted: io-child (x)) " + " ".join(fields) + "\n"
    assert stat_times(text) == (150, 250, 7, 9)


def test_dante_stop_lines_are_routine_and_its_warnings_alarming() -> None:
    lines = [
        "Dec  7 01:48:13 (1796608093.9) danted[14983]: info: Dante/server[1/1] v1.4.2 running",
        "Dec  7 01:48:16 (1796608096.4) danted[14983]: info: sigterm(): exiting on signal 15",
        "Dec  7 01:48:16 (1796608096.4) danted[14983]: alert: mother[1/1]: shutting down",
        "Dec  7 01:48:16 (1796608096.4) danted[14990]: warning: accept(2) failed: too many",
        "ts=... level=WARNING msg=\"egress source not on this host\"",
    ]
    assert stderr_alarms(lines) == lines[3:]


def test_disturbance_is_other_programs_cpu_and_the_rest_unaccounted() -> None:
    names = ("proxy", "loadgen", "backend", "foreign", "machine_user", "bench_user")

    def sample(at: float, seconds: tuple[float, ...], busy: tuple[int, int]) -> procstat.CpuSample:
        total = int(at * 100)  # clock ticks of each core
        return procstat.CpuSample(at, dict(zip(names, seconds, strict=True)),
                                  dict.fromkeys(names, 0.0),
                                  {0: (busy[0], total), 1: (busy[1], total)})

    # 10 s: the proxy used 7 s of its core, which was busy 9.5 s (softirq); another program
    # alive at the end 1 s; the CPUs' user time 1.5 s more than the bench's own (a program that
    # came and went).
    start = load.Mark(sample(0.0, (0.0, 0.0, 0.0, 5.0, 100.0, 50.0), (0, 0)), {})
    end = load.Mark(sample(10.0, (7.0, 4.0, 2.0, 6.0, 108.0, 56.5), (700, 950)), {})
    figures = bench_egress.egress_cpu_figures(load.Window(start, end), LAYOUT)
    assert figures["proxy_core"] == pytest.approx(0.95)
    assert figures["other"] == pytest.approx(0.15)
    assert figures["unaccounted"] == pytest.approx(0.25)
    assert not {"foreign", "machine_user", "bench_user"} & set(figures)
    quiet = load.Mark(sample(10.0, (7.0, 4.0, 2.0, 6.0, 106.0, 56.5), (700, 950)), {})
    assert bench_egress.egress_cpu_figures(load.Window(start, quiet), LAYOUT)[
        "other"] == pytest.approx(0.1)
    assert bench_egress.foreign_cpu_seconds({os.getpid()}) >= 0.0


def test_bottleneck_is_judged_by_the_cores() -> None:
    def part(proxy_core: float, load_core: float) -> dict[str, Any]:
        return {"cpu": {"proxy": 0.6, "proxy_core": proxy_core, "load_core": load_core}}

    assert bench_egress.bottleneck(part(0.97, 0.5)).startswith("the proxy")
    assert bench_egress.bottleneck(part(0.7, 0.99)).startswith("the load side")
    assert bench_egress.bottleneck(part(0.7, 0.6)).startswith("neither")


def test_per_session_bytes() -> None:
    before = {"total": (1000, 500), "worker": (400, 300)}
    holding = {"total": (3000, 2500), "worker": (2400, 2300)}
    assert per_session_bytes(before, holding, "total", 0, 1000) == pytest.approx(2048.0)
    assert per_session_bytes(before, holding, "worker", 1, 2000) == pytest.approx(1024.0)
    assert per_session_bytes(before, holding, "supervisor", 0, 10) != per_session_bytes(
        before, holding, "supervisor", 0, 10)  # NaN: no such part
    assert per_session_bytes(before, holding, "total", 0, 0) != 0.0


# --- summaries ---------------------------------------------------------------------------------

RUN = Run("egress-sessions", 1, LAYOUT, 16)


def cpu(proxy: float) -> dict[str, float]:
    return {"proxy": proxy, "proxy_sys": proxy / 2, "proxy_core": proxy, "loadgen": 0.4,
            "backend": 0.2, "load_core": 0.6, "other": 0.0}


def measurement(name: str, round_number: int, value: float, proxy_cpu: float = 1.0,
                errors: dict[str, int] | None = None) -> Measurement:
    return Measurement(name, round_number, value, value / proxy_cpu, cpu(proxy_cpu),
                       errors or {}, 0, {}, {"latency_ms": {}})


def rounds(values: dict[str, float], proxy_cpu: dict[str, float] | None = None,
           count: int = 3) -> list[Measurement]:
    proxy_cpu = proxy_cpu or {}
    return [measurement(name, r, value, proxy_cpu.get(name, 1.0))
            for r in range(1, count + 1) for name, value in values.items()]


def comparison(summary: dict[str, Any], subject: str) -> dict[str, Any]:
    return next(c for c in summary["comparisons"] if c["subject"] == subject)


def test_sessions_ratios_and_verdicts_against_each_reference() -> None:
    summary = summarise(RUN, rounds({"dante": 2000.0, "ingress-socks5": 2200.0,
                                     "ingress-socks5-bind": 1800.0,
                                     "haproxy-forward": 5000.0, "ingress-forward": 4600.0}))
    like = comparison(summary, "ingress-socks5")
    assert like["reference"] == "dante"
    assert like["ratio"] == pytest.approx(1.1)
    assert like["round_ratios"] == pytest.approx([1.1, 1.1, 1.1])
    assert like["target"]["min_ratio"] == 1.0
    assert like["target"]["decided_by"] == "throughput"
    assert like["target"]["verdict"] == "PASS"
    bind = comparison(summary, "ingress-socks5-bind")
    assert bind["ratio"] == pytest.approx(0.9)
    assert bind["target"]["verdict"] == "FAIL"
    forward = comparison(summary, "ingress-forward")
    assert forward["reference"] == "haproxy-forward"
    assert forward["ratio"] == pytest.approx(0.92)
    assert forward["target"]["min_ratio"] == 0.9
    assert forward["target"]["verdict"] == "PASS"
    text = "\n".join(summary_text(RUN, summary, argparse.Namespace(duration=8.0, warmup=1.0)))
    assert "ratio socks5 CONNECT / Dante CONNECT (like for like): 1.10x sessions/s" in text
    assert "ratio forward / HAProxy forward: 0.92x sessions/s" in text
    assert "16 clients in flight" in text


def test_an_unsaturated_proxy_is_judged_per_cpu() -> None:
    # HAProxy at half its core kept up with the load: per CPU it does twice the work.
    measurements = rounds({"haproxy-forward": 5000.0, "ingress-forward": 4800.0},
                          {"haproxy-forward": 0.5, "ingress-forward": 1.0})
    forward = comparison(summarise(RUN, measurements), "ingress-forward")
    assert forward["ratio"] == pytest.approx(0.96)
    assert forward["ratio_per_cpu"] == pytest.approx(0.48)
    assert forward["target"]["decided_by"] == "per-cpu"
    assert forward["target"]["throughput"] == "PASS"
    assert forward["target"]["verdict"] == "FAIL"


def test_errors_fail_a_comparison_whatever_its_ratio() -> None:
    measurements = [*rounds({"dante": 1000.0}),
                    measurement("ingress-socks5", 1, 3000.0, errors={"timeout": 2})]
    like = comparison(summarise(RUN, measurements), "ingress-socks5")
    assert like["target"]["verdict"].startswith("FAIL (errors")


def test_bulk_targets_are_1_2_against_both() -> None:
    summary = summarise(Run("egress-bulk", 1, LAYOUT),
                        rounds({"dante": 1000.0, "ingress-socks5": 1300.0,
                                "haproxy-forward": 1000.0, "ingress-forward": 1100.0}))
    assert comparison(summary, "ingress-socks5")["target"]["min_ratio"] == 1.2
    assert comparison(summary, "ingress-socks5")["target"]["verdict"] == "PASS"
    assert comparison(summary, "ingress-forward")["target"]["verdict"] == "FAIL"
    assert all(c["subject"] != "ingress-socks5-bind" for c in summary["comparisons"])


def idle_measurement(name: str, round_number: int, established: int,
                     parts: dict[str, tuple[tuple[int, int], tuple[int, int]]]
                     ) -> Measurement:
    before = {part: values[0] for part, values in parts.items()}
    holding = {part: values[1] for part, values in parts.items()}
    return Measurement(
        name, round_number, per_session_bytes(before, holding, "total", 0, established), None,
        {}, {}, 0, {},
        {"target": 1000, "established": established, "failed": 0, "lost_while_holding": 0,
         "sink_sessions_opened": established, "memory_before_kib": before,
         "memory_holding_kib": holding, "processes_before": 2, "processes_holding": 2,
         "open_s": 1.0, "hold_s": 3.0})


def test_idle_reports_bytes_per_session_by_part_and_needs_every_session() -> None:
    run = Run("egress-idle", 1, LAYOUT)
    ingress = {"total": ((70_000, 40_000), (75_000, 46_000)),
               "supervisor": ((40_000, 20_000), (40_000, 21_000)),
               "worker": ((30_000, 20_000), (35_000, 25_000))}
    dante = {"total": ((40_000, 5_000), (540_000, 355_000))}
    measurements = [idle_measurement("dante", 1, 1000, dante),
                    idle_measurement("ingress-socks5", 1, 1000, ingress)]
    summary = summarise(run, measurements)
    per = summary["medians"]["ingress-socks5"]["bytes_per_session"]
    assert per["total"]["rss"] == pytest.approx(5_120.0)
    assert per["worker"]["pss"] == pytest.approx(5_120.0)
    assert per["supervisor"]["rss"] == pytest.approx(0.0)
    assert comparison(summary, "ingress-socks5")["ratio"] == pytest.approx(0.01)
    assert comparison(summary, "ingress-socks5")["ratio_pss"] == pytest.approx(6 / 350)
    assert summary["target"]["verdict"] == "PASS"
    text = "\n".join(summary_text(run, summary, argparse.Namespace(
        idle_connections=1000, idle_batch=500, idle_hold=3.0)))
    assert "5,120 bytes RSS/session" in text
    assert "worker 5,120" in text
    short = summarise(run, [idle_measurement("dante", 1, 999, dante)])
    assert short["target"]["verdict"] == "FAIL"


# --- the command line and the plan -------------------------------------------------------------


def test_egress_scenarios_are_accepted_and_planned_per_concurrency() -> None:
    options = parse_args(["--scenarios", "egress-sessions,egress-bulk", "--workers", "2",
                          "--egress-concurrency", "16,128"])
    runs = plan(options)
    assert [run.key for run in runs] == ["egress-sessions-c16", "egress-sessions-c128",
                                         "egress-bulk"]
    assert all(run.workers == 1 for run in runs)


@pytest.mark.parametrize(("text", "levels"), [("16", [16]), ("16,128", [16, 128])])
def test_parse_levels(text: str, levels: list[int]) -> None:
    assert parse_levels(text) == levels


@pytest.mark.parametrize("text", ["", "0", "8,8", "x"])
def test_parse_levels_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_levels(text)


# --- the sink ----------------------------------------------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def test_smtp_sink_banner_quit_and_anything_else() -> None:
    counts = bench_egress_sink._Counts()
    sink = bench_egress_sink._SmtpSink(counts)
    transport = Transport()
    sink.connection_made(transport)  # type: ignore[arg-type]
    assert bytes(transport.written) == bench_egress_sink.BANNER
    sink.data_received(b"EHLO x\r\nQU")
    assert transport.written.endswith(bench_egress_sink.UNKNOWN)
    assert not transport.closed
    sink.data_received(b"IT\r\n")
    assert transport.written.endswith(bench_egress_sink.BYE)
    assert transport.closed
    assert (counts.sessions, counts.quits, counts.bad) == (1, 1, 1)


def data_exchange(message_bytes: int, payload: bytes, *,
                  close: bool = False) -> tuple[bytes, dict[str, int]]:
    sink = bench_egress_sink._DataSink(message_bytes)
    ours, theirs = socket.socketpair()
    counter = [0]
    with ours:
        thread = threading.Thread(target=sink.session, args=(theirs, counter), daemon=True)
        thread.start()
        ours.settimeout(5)
        ours.sendall(b"DATA\r\n" + payload)
        if close:
            ours.shutdown(socket.SHUT_WR)
        else:
            answer = b""
            while answer.count(b"\r\n") < 3:
                answer += ours.recv(1024)
            ours.sendall(b"QUIT\r\n")
        thread.join(5)
        received = b""
        while chunk := ours.recv(1024):
            received += chunk
    with sink._lock:
        sink.per_connection.append(counter)
    return received if close else answer + received, sink.stats()


def test_data_sink_accepts_a_message_of_its_size_ending_with_the_terminator() -> None:
    body, count, last = message_chunks(300_000, 65536)
    answer, stats = data_exchange(300_000, bytes(body) * count + last)
    assert answer.split(b"\r\n")[:4] == [bench_egress_sink.BANNER.strip(),
                                         bench_egress_sink.GO_AHEAD.strip(),
                                         bench_egress_sink.ACCEPTED.strip(),
                                         bench_egress_sink.BYE.strip()]
    assert stats["messages"] == 1
    assert stats["errors"] == 0
    assert stats["bytes"] == 300_000


def test_data_sink_refuses_a_message_without_its_terminator() -> None:
    answer, stats = data_exchange(1000, b"x" * 1000)
    assert bench_egress_sink.BAD_MESSAGE.strip() in answer
    assert stats["errors"] == 1
    assert stats["messages"] == 0


def test_data_sink_counts_a_message_cut_short() -> None:
    _, stats = data_exchange(1000, b"x" * 10, close=True)
    assert stats["aborted"] == 1
    assert stats["bytes"] == 10


def test_the_forward_floor_is_a_reference_beside_haproxy_never_judged() -> None:
    summary = summarise(RUN, rounds({"haproxy-forward": 5000.0, "ingress-forward": 3000.0,
                                     "floor-forward": 4000.0}))
    floor = comparison(summary, "floor-forward")
    assert floor["reference"] == "haproxy-forward"
    assert floor["ratio"] == pytest.approx(0.8)
    assert "target" not in floor
    assert comparison(summary, "ingress-forward")["target"]["verdict"] == "FAIL"
    # the targets first, in their order, the floors after them
    assert list(summary["medians"]) == ["haproxy-forward", "ingress-forward", "floor-forward"]
    text = "\n".join(summary_text(RUN, summary, argparse.Namespace(duration=8.0, warmup=1.0)))
    assert "ratio floor-forward / HAProxy forward (a reference: no target): 0.80x" in text


def test_floor_targets_and_setups_only_in_egress_sessions(tmp_path: Path) -> None:
    options = argparse.Namespace(floor=[0.0, 8.0])
    names = [t.name for t in bench_egress.targets(RUN, options)]
    assert names == [*bench_egress.TARGET_NAMES, "floor-forward", "floor-forward-epoll",
                     "floor-forward+8us", "floor-forward-epoll+8us"]
    bulk = Run("egress-bulk", 1, LAYOUT)
    assert [t.name for t in bench_egress.targets(bulk, options)] == list(
        bench_egress.TARGET_NAMES)
    setups = bench_egress.egress_setups(tmp_path, PortPool(31300), 25000, {1}, "file",
                                        floor_burns=[0.0, 8.0])
    floor = setups["floor-forward"]
    assert floor.argv[:3] == ["taskset", "-c", "1"]
    assert floor.argv[-5:] == ["--forward", "--port", str(floor.port), "--burn-us", "0"]
    assert setups["floor-forward+8us"].argv[-1] == "8"
    assert floor.port != setups["floor-forward+8us"].port
    assert floor.access_log is None
    epoll = setups["floor-forward-epoll"]
    assert epoll.argv[-6:] == ["--forward", "--epoll", "--port", str(epoll.port), "--burn-us",
                               "0"]
    assert len({setup.port for setup in setups.values()
                if setup.name.startswith("floor")}) == 4


def test_io_engine_both_measures_each_ingress_target_again_on_uvloop(tmp_path: Path) -> None:
    options = argparse.Namespace(floor=[], io_engine="both")
    names = [t.name for t in bench_egress.targets(RUN, options)]
    assert names == [*bench_egress.TARGET_NAMES, "ingress-socks5+uvloop",
                     "ingress-socks5-bind+uvloop", "ingress-forward+uvloop"]
    setups = bench_egress.egress_setups(tmp_path, PortPool(31400), 25000, {1}, "file",
                                        engine_beside="uvloop")
    assert list(setups) == names
    default, beside = setups["ingress-forward"], setups["ingress-forward+uvloop"]
    assert default.config_path != beside.config_path
    assert beside.port != default.port
    assert setups["ingress-socks5+uvloop"].port == setups["ingress-socks5-bind+uvloop"].port
    for setup, engine in ((default, "epoll"), (beside, "uvloop")):
        config = load_config(setup.config_path, environ={})
        assert {listener.io_engine for listener in config.listeners.values()} == {engine}
    assert "ingress-forward+uvloop-access-{tag}" in str(beside.access_log)


def test_io_engine_alone_puts_the_targets_on_it() -> None:
    assert bench_egress.io_engines(argparse.Namespace(io_engine="uvloop")) == ("uvloop", None)
    assert bench_egress.io_engines(argparse.Namespace()) == ("epoll", None)
    names = [t.name for t in bench_egress.targets(RUN, argparse.Namespace(io_engine="uvloop"))]
    assert names == list(bench_egress.TARGET_NAMES)


def test_an_engine_reference_is_compared_with_its_targets_reference_never_judged() -> None:
    summary = summarise(RUN, rounds({"haproxy-forward": 5000.0, "ingress-forward": 4500.0,
                                     "ingress-forward+uvloop": 3000.0}))
    beside = comparison(summary, "ingress-forward+uvloop")
    assert beside["reference"] == "haproxy-forward"
    assert beside["ratio"] == pytest.approx(0.6)
    assert "target" not in beside
    assert "a reference: no target" in beside["label"]
