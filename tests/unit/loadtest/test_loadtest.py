"""The load test's pure parts: the exactly-once comparison, ids and client plans, the generated
messages (read back by the SMTP stub's id parser), the stubs' id logs, and the egress run's
plans, retry rule, drain report and listener check."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.demo import stub_http, stub_smtp
from loadtest import compare, egress_run, traffic
from loadtest.compare import Arrival, Sent, ServiceLog
from tests.unit.demo.test_stub_http import RecordingTransport


def sent(ident: str, *, ok: bool = True, service: str = "mta", kind: str = "http",
         client: str | None = "127.0.0.2", t0: float = 10.0, t1: float = 11.0,
         ambiguous: bool = False) -> Sent:
    return Sent(ident, kind, service, client, ok, t0, t1, ambiguous=ambiguous)


def log(service: str, *entries: tuple[str, str, str], unidentified: int = 0,
        dropped: int = 0) -> ServiceLog:
    return ServiceLog(service, tuple(Arrival(service, k, i, c) for k, i, c in entries),
                      unidentified, dropped)


# --- compare --------------------------------------------------------------------------------


def test_exactly_once_passes() -> None:
    result = compare.compare([sent("a"), sent("b", kind="smtp", client="203.0.113.5")],
                             [log("mta", ("http", "a", "127.0.0.2"),
                                  ("smtp", "b", "203.0.113.5"))])
    assert result.passed
    assert (result.sent_ok, result.received) == (2, 2)


def test_each_verdict() -> None:
    result = compare.compare(
        [sent("lost"), sent("dup"), sent("wrong-service", service="event-tracker"),
         sent("wrong-kind", kind="smtp"), sent("wrong-address"),
         sent("unchecked", client=None)],
        [log("mta", ("http", "dup", "127.0.0.2"), ("http", "dup", "127.0.0.2"),
             ("http", "wrong-service", "127.0.0.2"), ("http", "wrong-kind", "127.0.0.2"),
             ("http", "wrong-address", "127.0.0.3"), ("http", "unchecked", "10.1.1.1"),
             ("http", "stranger", "127.0.0.2"), unidentified=2)])
    assert result.lost == ["lost"]
    assert result.duplicated == ["dup"]
    assert sorted(result.misrouted) == ["wrong-kind", "wrong-service"]
    assert result.wrong_address == ["wrong-address"]
    assert result.unknown == ["stranger"]
    assert result.unidentified == 2
    assert not result.passed
    assert len(result.problems()) == 6


def test_failures_are_explained_only_inside_a_fault_window() -> None:
    records = [sent("early", ok=False, t0=1.0, t1=2.0),
               sent("inside", ok=False, t0=4.0, t1=6.0),
               sent("arrived", ok=False, t0=9.0, t1=12.0),
               sent("smtp", ok=False, kind="smtp", t0=5.0, t1=6.0)]
    result = compare.compare(records, [log("mta", ("http", "arrived", "127.0.0.2"))],
                             [(5.0, 10.0)])
    assert sorted(result.failed_explained) == ["arrived", "inside"]
    assert result.failed_arrived == 1
    # A message given up on is a lost message whatever the fault.
    assert sorted(result.failed_unexplained) == ["early", "smtp"]


def test_a_failed_request_that_arrived_twice_is_a_duplicate() -> None:
    result = compare.compare([sent("x", ok=False)],
                             [log("mta", ("http", "x", "127.0.0.2"), ("http", "x", "127.0.0.2"))],
                             [(0.0, 100.0)])
    assert result.duplicated == ["x"]


def test_ambiguous_smtp_duplicates_are_reported_not_failed() -> None:
    result = compare.compare([sent("m", kind="smtp", ambiguous=True)],
                             [log("mta", ("smtp", "m", "127.0.0.2"), ("smtp", "m", "127.0.0.2"))])
    assert result.ambiguous_duplicates == ["m"]
    assert result.passed


def test_a_reused_id_and_a_full_log_fail() -> None:
    assert compare.compare([sent("a"), sent("a")],
                           [log("mta", ("http", "a", "127.0.0.2"))]).duplicated == ["a"]
    assert not compare.compare([], [log("mta", dropped=1)]).passed


@given(st.ip_addresses())
def test_same_address_ignores_spelling(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                       ) -> None:
    text = str(address)
    spelled = f"[{address.exploded}]" if address.version == 6 else address.exploded
    assert compare.same_address(text, spelled)
    assert not compare.same_address(text, "not-an-address")


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.booleans(),
                          st.sampled_from(["mta", "event-tracker"]),
                          st.sampled_from(["http", "smtp"])),
                max_size=20, unique_by=lambda t: t[0]))
def test_ledger_round_trip_and_a_perfect_run_passes(
        rows: list[tuple[str, bool, str, str]]) -> None:
    records = [Sent(i, kind, service, "127.0.0.9", True, 1.0, 2.0, name="n")
               for i, _, service, kind in rows]
    lines = [json.dumps(record.to_json()) for record in records]
    assert compare.read_ledger(lines) == records
    logs = [ServiceLog.from_json({"service": service, "unidentified": {}, "dropped": 0,
                                  "entries": [[r.kind, r.ident, "127.0.0.9"] for r in records
                                              if r.service == service]})
            for service in ("mta", "event-tracker")]
    assert compare.compare(records, logs).passed


# --- traffic --------------------------------------------------------------------------------


def test_ids_are_unique_and_valid_for_the_stubs() -> None:
    source = traffic.IdSource()
    ids = {source.next("http") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(stub_smtp.valid_id(ident) for ident in ids)


@given(st.integers(min_value=0, max_value=2**32), st.floats(0, 1), st.floats(0, 1),
       st.booleans())
def test_client_plans_use_documentation_or_own_loopback_addresses(
        seed: int, proxied_share: float, ipv6_share: float, loopback: bool) -> None:
    plan = traffic.plan_client(random.Random(seed), proxied_share=proxied_share,
                               ipv6_share=ipv6_share, loopback=loopback)
    if plan.proxied:
        assert plan.client is not None
        assert plan.source is None
        address = ipaddress.ip_address(plan.client)
        assert any(address in ipaddress.ip_network(net)
                   for net in ("203.0.113.0/24", "2001:db8::/32"))
        assert plan.proxy_version in (1, 2)
    elif loopback:
        assert plan.source == plan.client
        assert plan.source is not None
        assert plan.source.startswith("127.0.0.")
        assert plan.source != "127.0.0.1"
    else:
        assert plan.source is None
        assert plan.client is None


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1"), ("http://mail.example.com", "mail.example.com"),
    ("https://[::1]:8443/x", "::1"), ("[::1]", "::1"), (None, "127.0.0.1")])
def test_parse_host(host: str | None, expected: str) -> None:
    assert traffic.parse_host(host) == expected


@given(st.sampled_from([traffic.submission_message, traffic.bounce_message,
                        traffic.feedback_report]),
       st.integers(min_value=0, max_value=200_000))
def test_generated_messages_carry_their_id_and_are_smtp_safe(builder: Any, size: int) -> None:
    message: bytes = builder("abc-smtp-7", size)
    assert stub_smtp.loadtest_id(message[:stub_smtp.HEAD_LIMIT]) == "abc-smtp-7"
    lines = message.split(b"\r\n")
    assert all(len(line) <= 998 and not line.startswith(b".") for line in lines)
    assert message.endswith(b"\r\n")
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert len(message) >= size - 200


@given(st.integers(min_value=0, max_value=400_000))
def test_send_json_body_is_json_of_about_the_size(size: int) -> None:
    body = traffic.send_json_body(random.Random(1), "id-1", size)
    document = json.loads(body)
    assert document["message"]["custom_headers"][traffic.ID_HEADER] == "id-1"
    assert len(body) >= size - 10


# --- the stubs' id logs ---------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_loadtest_id_never_fails_on_any_bytes(head: bytes) -> None:
    found = stub_smtp.loadtest_id(head)
    assert found is None or stub_smtp.valid_id(found)


def test_loadtest_id_only_in_the_header_block() -> None:
    assert stub_smtp.loadtest_id(b"Subject: x\r\nx-loadtest-id:  a.b-1 \r\n\r\n") == "a.b-1"
    assert stub_smtp.loadtest_id(b"Subject: x\r\n\r\nX-Loadtest-Id: a\r\n") is None
    assert stub_smtp.loadtest_id(b"X-Loadtest-Id: a b\r\n\r\n") is None


def test_smtp_stub_logs_ids_with_the_proxy_address() -> None:
    ids = stub_smtp.IdLog()
    stats = stub_smtp.StubStats(received=ids)
    session = stub_smtp.StubSmtp("mta.test", stats, expect_proxy=True)
    session.connection_made(RecordingTransport())  # type: ignore[arg-type]
    session.data_received(b"PROXY TCP6 2001:db8::7 ::1 4000 25\r\nEHLO x\r\nMAIL FROM:<>\r\n"
                          b"RCPT TO:<a@b>\r\nDATA\r\n")
    body = b"X-Loadtest-Id: m-1\r\n\r\n" + b"x" * 20000 + b"\r\n"
    for start in range(0, len(body), 777):  # in pieces, as TCP delivers it
        session.data_received(body[start:start + 777])
    session.data_received(b".\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n"
                          b"Subject: none\r\n\r\n.\r\n")
    assert ids.entries == [("smtp", "m-1", "2001:db8::7")]
    assert ids.unidentified == {"smtp": 1}
    stats.reset()
    assert ids.entries == []


def test_http_stub_logs_ids_and_serves_them() -> None:
    ids = stub_smtp.IdLog(limit=1)
    service = stub_http.StubService("event-tracker", received=ids)
    transport = RecordingTransport()
    protocol = stub_http.StubHttp(service)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Loadtest-Id: r-1\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\nX-Loadtest-Id: r-2\r\n\r\n"
        b"GET /_stub/received HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = bytes(transport.written).rsplit(b"\r\n\r\n", 1)[1]
    assert json.loads(answer) == {"service": "event-tracker",
                                  "entries": [["http", "r-1", "203.0.113.9"]],
                                  "unidentified": {"http": 1}, "dropped": 1}
    assert service.http.requests == 3  # the id log's own path is not counted


def test_received_path_without_a_log_is_404() -> None:
    transport = RecordingTransport()
    protocol = stub_http.StubHttp(stub_http.StubService("tls"))
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET /_stub/received HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 404 ")


# --- egress: the plans, the messages, the MX stub's log -------------------------------------


def test_egress_sources_and_modes_are_checked() -> None:
    assert traffic.egress_sources(" 127.0.0.5, 127.0.0.7,::1") == ("127.0.0.5", "127.0.0.7",
                                                                    "::1")
    for bad in ("", "127.0.0.5,mx.example", "127.0.0.5,127.0.0.5"):
        with pytest.raises(ValueError, match="--egress-sources"):
            traffic.egress_sources(bad)
    assert traffic.egress_modes("socks5-bind,forward-v1") == ("socks5-bind", "forward-v1")
    with pytest.raises(ValueError, match="socks4"):
        traffic.egress_modes("socks4,forward-v2")
    with pytest.raises(ValueError, match="none given"):
        traffic.egress_modes(" , ")


@given(st.integers(min_value=0, max_value=2**32),
       st.lists(st.sampled_from(traffic.EGRESS_MODES), min_size=1, unique=True))
def test_egress_plans_expect_the_source_the_session_asks_for(seed: int, modes: list[str]
                                                             ) -> None:
    sources = ("127.0.0.5", "127.0.0.7", "127.0.0.8")
    plan = traffic.plan_egress(random.Random(seed), tuple(modes), sources)
    assert plan.mode in modes
    if plan.mode == "socks5-connect":
        # A CONNECT alone names no source: the listener's default, the first one, is expected.
        assert plan.requested is None
        assert plan.expected == sources[0]
    else:
        assert plan.requested == plan.expected
        assert plan.expected in sources
    assert plan.listener == ("socks5" if plan.mode.startswith("socks5") else "forward")
    assert plan.proxy_version == (1 if plan.mode == "forward-v1" else 2)


@pytest.mark.parametrize(("step", "code", "retry"), [
    ("greeting", None, True), ("connect", None, True), ("bind", 1, True), ("connect", 5, True),
    ("connect", 6, True), ("connect", 4, True), ("bind", 2, False), ("connect", 2, False),
    ("connect", 7, False), ("connect", 8, False), ("greeting", 0xFF, False),
    ("authentication", 1, False)])
def test_egress_retryable(step: str, code: int | None, retry: bool) -> None:
    assert traffic.egress_retryable(step, code) is retry


@given(st.integers(min_value=0, max_value=100_000))
def test_egress_message_carries_its_id_and_source(size: int) -> None:
    message = traffic.egress_message("abc-smtp-9", "127.0.0.7", size)
    assert stub_smtp.loadtest_id(message[:stub_smtp.HEAD_LIMIT]) == "abc-smtp-9"
    assert f"\r\n{traffic.SOURCE_HEADER}: 127.0.0.7\r\n".encode() in message
    assert all(len(line) <= 998 and not line.startswith(b".")
               for line in message.split(b"\r\n"))
    assert len(message) >= size - 200


def test_mx_stub_logs_each_message_with_its_tcp_peer() -> None:
    ids = stub_smtp.IdLog()
    stats = stub_smtp.StubStats(received=ids)
    session = stub_smtp.StubSmtp("mx.test", stats, expect_proxy=False)
    transport = RecordingTransport(("127.0.0.7", 41000))
    session.connection_made(transport)  # type: ignore[arg-type]
    assert transport.written.startswith(b"220 mx.test ESMTP demo stub; your address is "
                                        b"127.0.0.7:41000\r\n")
    # Something that looks like a PROXY header is just a bad command here.
    session.data_received(b"PROXY TCP4 203.0.113.9 127.0.0.250 1 25\r\nEHLO x\r\n"
                          b"MAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n")
    session.data_received(traffic.egress_message("o-1", "127.0.0.7", 3000) + b".\r\n")
    assert ids.entries == [("smtp", "o-1", "127.0.0.7")]
    assert b"client 127.0.0.7:41000)" in transport.written


# --- egress: the runner's pure parts ----------------------------------------------------------


def test_egress_config_has_the_load_tests_sources_and_settings(tmp_path: Path) -> None:
    from ingress import config
    from ingress.demo import single_node as demo

    path = tmp_path / "egress.toml"
    ports = demo.Ports(24000)
    path.write_text(egress_run.config_text(ports, workers=2, drain=2.0, grace=15.0))
    loaded = config.load(path, environ={})
    assert loaded.workers == 2
    assert (loaded.timeouts.drain, loaded.timeouts.grace) == (2.0, 15.0)
    for listener in loaded.enabled_listeners:
        assert listener.egress_sources == egress_run.SOURCES
        assert listener.egress_ports == (ports[demo.SINK],)
    options = egress_run.locust_options(ports)
    assert options[options.index("--egress-sources") + 1] == "127.0.0.5,127.0.0.7,127.0.0.8"
    assert options[options.index("--egress-to") + 1] == f"127.0.0.250:{ports[demo.SINK]}"


def test_fields_of_reads_logfmt() -> None:
    assert egress_run.fields_of('ts=1 kind=egress detail="source 127.0.0.9" end=refused') == {
        "ts": "1", "kind": "egress", "detail": "source 127.0.0.9", "end": "refused"}


def test_drain_report_counts_the_sessions_that_ended_after_the_signal() -> None:
    signalled = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()

    def line(ended: str, duration_ms: int, end: str, kind: str = "egress") -> str:
        return (f"ts=2026-01-02T03:04:{ended}Z kind={kind} listener=egress-socks "
                f"source=127.0.0.7 duration_ms={duration_ms} end={end} worker=0")

    report = egress_run.drain_report([
        line("04.000", 10, "closed"),              # before the signal: not counted
        line("05.500", 900, "server-closed"),      # open at the signal
        line("06.000", 200, "client-closed"),      # accepted during the drain
        line("20.000", 16000, "shutdown-grace-expired"),
        line("06.000", 10, "-", kind="tcp"),       # not an egress line
        "2026-01-02T03:04:06Z level=INFO msg=\"stopped\"",
    ], signalled)
    assert (report.open_at_signal, report.accepted_after, report.cut) == (2, 1, 1)
    assert report.ends == {"server-closed": 1, "client-closed": 1, "shutdown-grace-expired": 1}
    assert "2 of the first egress process's sessions were open" in report.text()


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:61A8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 0100007F:61A8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 0100007F:59CE 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1
   3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
"""


def test_listening_inodes_are_the_listen_sockets_of_the_ports() -> None:
    # 0x61A8 = 25000 and 0x59CE = 22990; 8080 (0x1F90) is another port, line 1 a connection.
    assert egress_run.listening_inodes(PROC_NET_TCP, [25000, 22990]) == {1111, 3333}
    assert egress_run.listening_inodes(PROC_NET_TCP, [1]) == set()


def _netlink(kind: int, body: bytes) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 2, 1, 0) + body + b"\0" * (-length % 4)


def _diag_message(port: int, inode: int) -> bytes:
    sockid = struct.pack(">HH", port, 0) + b"\0" * 44
    return struct.pack("=BBBB", 2, 10, 0, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, 0, inode)


def test_parse_diag_reads_ports_and_inodes_until_done() -> None:
    data = _netlink(20, _diag_message(25000, 1111)) + _netlink(20, _diag_message(22526, 3333))
    assert egress_run.parse_diag(data) == ([(25000, 1111), (22526, 3333)], False)
    assert egress_run.parse_diag(_netlink(20, _diag_message(1, 2)) + _netlink(3, b"\0" * 4)) == (
        [(1, 2)], True)
    with pytest.raises(OSError, match="sock_diag"):
        egress_run.parse_diag(_netlink(2, struct.pack("=i", -1) + b"\0" * 16))
    with pytest.raises(OSError, match="malformed"):
        egress_run.parse_diag(struct.pack("=IHHII", 4, 20, 0, 0, 0))


def test_a_process_with_a_listening_socket_is_seen_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert not egress_run.still_listening([os.getpid()], [port])
        sock.listen(1)
        assert egress_run.still_listening([os.getpid()], [port])
    assert not egress_run.still_listening([os.getpid()], [port])


@pytest.mark.parametrize(("argv", "ingress", "egress"), [
    ([], True, True), (["--scenario", "ingress"], True, False),
    (["--scenario", "egress", "--fault", "egress-rolling"], False, True)])
def test_scenarios_choose_the_tiers_and_their_users(argv: list[str], ingress: bool,
                                                    egress: bool, tmp_path: Path) -> None:
    from ingress.demo import single_node as demo
    from loadtest import run

    args = run.parse_args(argv)
    assert (run.runs_ingress(args), run.runs_egress(args)) == (ingress, egress)
    command = run.locust_command(args, demo.Ports(24000), tmp_path)
    assert ("--egress-to" in command) == egress
    weight = (command[command.index("--weight-egress") + 1] if "--weight-egress" in command
              else None)
    assert (weight == "0") == (not egress)
    assert ("--weight-tracking" in command) == (not ingress)


@pytest.mark.parametrize("argv", [["--scenario", "egress", "--fault", "rolling"],
                                  ["--scenario", "ingress", "--fault", "egress-rolling"],
                                  ["--scenario", "both"]])
def test_a_fault_needs_its_tier(argv: list[str]) -> None:
    from loadtest import run

    with pytest.raises(SystemExit) as exited:
        run.parse_args(argv)
    assert exited.value.code == 2
