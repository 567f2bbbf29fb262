"""loadtest/bench_report.py: the summary with the --floor references, reported beside the
comparison, never part of its verdict."""

from __future__ import annotations

import argparse

import pytest

from loadtest.bench_report import (
    UNITS,
    abnormal_ends,
    health,
    qualified,
    round_tail,
    summarise,
    summary_text,
)
from loadtest.bench_scenarios import (
    HTTP_SCENARIOS,
    S_TIME_SCENARIOS,
    SCENARIOS,
    TARGETS,
    TLS_SCENARIOS,
    WRK_SCENARIOS,
    Layout,
    Measurement,
    Run,
    describe_scenario,
)

CPU = {"proxy": 1.0, "proxy_sys": 0.5, "proxy_core": 1.0, "loadgen": 0.5, "backend": 0.5,
       "load_core": 1.0, "machine": None, "other": 0.0}
RUN = Run("http-keepalive", 1, Layout({0}, {1}))


def measurement(proxy: str, round_number: int, value: float,
                errors: dict[str, int] | None = None) -> Measurement:
    return Measurement(proxy, round_number, value, value, dict(CPU), errors or {}, 0, {},
                             {"latency_ms": {"p50": 1.0, "p99": 2.0}})


def test_references_are_ratios_to_haproxy_and_stay_out_of_the_verdict() -> None:
    rounds = [measurement(name, r, value) for r in (1, 2, 3) for name, value in
              (("haproxy", 50_000.0), ("mta-ingress", 48_000.0), ("floor", 55_000.0),
               ("floor+8us", 30_000.0))]
    # a reference's trouble is its own: the comparison stays clean
    rounds.append(measurement("floor+8us", 4, 1.0, {"connect": 3}))
    summary = summarise(RUN, rounds)
    assert summary["ratio"] == pytest.approx(0.96)  # http-keepalive's target: 0.95x
    assert summary["references"]["floor"]["ratio"] == pytest.approx(1.1)
    assert summary["references"]["floor+8us"]["ratio"] == pytest.approx(0.6)
    assert summary["target"]["verdict"] == "PASS"
    assert len(summary["round_ratios"]) == 3
    text = "\n".join(summary_text(RUN, summary, argparse.Namespace(
        http_connections=64, http_duration=3.0, warmup=1.0, floor=[0.0, 8.0], origin="stub")))
    assert "reference floor/haproxy: 1.10x" in text
    assert "reference floor+8us/haproxy: 0.60x" in text


def test_without_references_the_summary_is_the_comparison() -> None:
    summary = summarise(RUN, [measurement("haproxy", 1, 10.0),
                                    measurement("mta-ingress", 1, 5.0)])
    assert summary["references"] == {}
    assert set(summary["medians"]) == {"haproxy", "mta-ingress"}
    assert summary["target"]["verdict"].startswith("FAIL")


@pytest.mark.parametrize(("ends", "abnormal"), [
    # wrk's end of run: up to one client-left end per connection and run, of either kind
    ({"ok": 900, "client-aborted": 60, "rejected:tls-handshake-aborted": 68}, {}),
    ({"ok": 900, "rejected:tls-handshake-aborted": 129},
     {"rejected:tls-handshake-aborted": 129}),
    ({"ok": 900, "rejected:tls-handshake-failed": 1}, {"rejected:tls-handshake-failed": 1}),
    ({"ok": 900, "client-aborted": 3, "server-failed": 2}, {"server-failed": 2}),
    # tls-request-*: every request answered by the proxy itself
    ({"local": 900}, {}),
])
def test_client_left_ends_are_the_loads_doing_up_to_one_per_connection_and_run(
        ends: dict[str, int], abnormal: dict[str, int]) -> None:
    m = Measurement("mta-ingress", 1, 1.0, None, {}, {}, 0, ends,
                          {"expected_client_aborts": 128})
    assert abnormal_ends(m) == abnormal


def test_a_verdict_fails_on_errors_and_is_unreliable_after_disturbed_rounds() -> None:
    quiet = {"errors": 0, "abnormal_ends": 0, "stderr_alarms": 0, "bad_exits": 0,
             "disturbed_rounds": 0}
    assert qualified("PASS", [quiet, quiet]) == "PASS"
    assert qualified("PASS", [quiet, {**quiet, "disturbed_rounds": 1}]).startswith(
        "PASS (unreliable: DISTURBED rounds")
    assert qualified("PASS", [quiet, {**quiet, "stderr_alarms": 2, "disturbed_rounds": 1}]
                     ) == "FAIL (errors, see the rounds)"


def test_health_and_round_tail_tell_what_went_wrong() -> None:
    cpu = {"proxy": 1.0, "other": 0.5}
    m = Measurement("mta-ingress", 1, 1.0, None, cpu, {"timeout": 2, "reset": 1}, 1,
                    {"ok": 5, "server-failed": 1}, {}, ["level=ERROR boom"])
    assert health([m, measurement("mta-ingress", 2, 1.0)]) == {
        "errors": 3, "abnormal_ends": 1, "stderr_alarms": 1, "disturbed_rounds": 1,
        "bad_exits": 1}
    assert round_tail(m) == ("errors: reset=1, timeout=2  exit=1  stderr: 1 alarming line(s), "
                             "first: level=ERROR boom  ends: ok=5, server-failed=1  <-- abnormal")
    assert round_tail(measurement("haproxy", 1, 1.0)) == "errors: none"


def test_the_origin_is_named_in_the_scenario_line() -> None:
    options = argparse.Namespace(http_connections=50, http_duration=3.0, warmup=1.0,
                                 floor=[], origin="nginx")
    summary = summarise(RUN, [measurement("haproxy", 1, 10.0), measurement("mta-ingress", 1, 9.0)])
    assert "-c50 keep-alive" in "\n".join(summary_text(RUN, summary, options))
    assert ", nginx;" in "\n".join(summary_text(RUN, summary, options))


def test_every_scenario_has_its_units_and_a_description() -> None:
    options = argparse.Namespace(
        concurrency=64, duration=8.0, warmup=1.0, bulk_connections=2, bulk_chunk=1 << 20,
        http_duration=3.0, http_connections=50, http_1mib_connections=8, http_rate=None,
        origin="nginx", handshake_clients=16, idle_connections=100, idle_batch=10,
        idle_hold=1.0, idle_note="")
    for scenario in SCENARIOS:
        assert scenario in UNITS
        assert describe_scenario(Run(scenario, 1, Layout({0}, {1})), options)
    # the bare handshakes are TLS and HTTP scenarios (certificate, origin) but not wrk's
    for scenario in S_TIME_SCENARIOS:
        assert scenario in TLS_SCENARIOS
        assert scenario in HTTP_SCENARIOS
        assert scenario not in WRK_SCENARIOS
        assert TARGETS[scenario] == pytest.approx(1 / 1.1)
    assert "16 parallel openssl s_time -new" in describe_scenario(
        Run("tls-handshake-rsa", 1, Layout({0}, {1})), options)
    finished = describe_scenario(Run("tls-request-ecdsa", 1, Layout({0}, {1})), options)
    assert "16 parallel openssl s_time -new -www" in finished
    assert "GET /.kubernetes-readiness-probe HTTP/1.0" in finished


def test_a_jemalloc_reference_is_named_for_what_it_is_not_as_a_floor() -> None:
    rounds = [measurement(name, 1, value) for name, value in
              (("haproxy", 50_000.0), ("mta-ingress", 45_000.0),
               ("mta-ingress+jemalloc", 47_500.0))]
    summary = summarise(RUN, rounds)
    assert summary["ratio"] == pytest.approx(0.9)  # the compared one: glibc's
    assert summary["references"]["mta-ingress+jemalloc"]["ratio"] == pytest.approx(0.95)
    text = "\n".join(summary_text(RUN, summary, argparse.Namespace(
        http_connections=64, http_duration=3.0, warmup=1.0, floor=[], origin="stub")))
    assert "reference mta-ingress+jemalloc/haproxy: 0.95x" in text
    assert "with jemalloc preloaded as its C allocator" in text
    assert "floor.py" not in text


def test_a_handshake_run_is_judged_by_cpu_per_handshake_when_the_load_core_limits() -> None:
    run = Run("tls-handshake-ecdsa", 1, Layout({0}, {1}))
    light = {**CPU, "proxy": 0.4, "proxy_core": 0.42}

    def handshakes(proxy: str, round_number: int, us: float) -> Measurement:
        return Measurement(proxy, round_number, 880.0, 1e6 / us, dict(light), {}, 0, {},
                           {"proxy_us_per_handshake": us, "proxy_sys_us_per_handshake": 50.0})

    summary = summarise(run, [handshakes("haproxy", 1, 400.0),
                              handshakes("mta-ingress", 1, 430.0)])
    assert summary["target"]["decided_by"] == "per-cpu"
    assert summary["target"]["verdict"] == "PASS"  # 1.075x the CPU: within 1.1x
    assert summary["medians"]["mta-ingress"]["proxy_us_per_handshake"] == 430.0
    text = "\n".join(summary_text(run, summary, argparse.Namespace(
        handshake_clients=16, http_duration=3.0, warmup=1.0, floor=[], origin="stub")))
    assert "proxy CPU per handshake 430 us: user 380 us, kernel 50 us" in text
    worse = summarise(run, [handshakes("haproxy", 1, 400.0), handshakes("mta-ingress", 1, 450.0)])
    assert worse["target"]["verdict"] == "FAIL"  # 1.125x
