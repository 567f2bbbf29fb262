"""loadtest/bench_report.py: the summary with the --floor references, reported beside the
comparison, never part of its verdict."""

from __future__ import annotations

import argparse

import pytest

from loadtest.bench_report import (
    abnormal_ends,
    health,
    qualified,
    round_tail,
    summarise,
    summary_text,
)
from loadtest.bench_scenarios import Layout, Measurement, Run

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
