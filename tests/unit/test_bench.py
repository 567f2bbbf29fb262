"""bench.py's summary with the --floor references: reported beside the comparison, never part
of its verdict."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest import bench

CPU = {"proxy": 1.0, "proxy_sys": 0.5, "proxy_core": 1.0, "loadgen": 0.5, "backend": 0.5,
       "load_core": 1.0, "machine": None, "other": 0.0}
RUN = bench.Run("http-keepalive", 1, bench.Layout({0}, {1}))


def measurement(proxy: str, round_number: int, value: float,
                errors: dict[str, int] | None = None) -> bench.Measurement:
    return bench.Measurement(proxy, round_number, value, value, dict(CPU), errors or {}, 0, {},
                             {"latency_ms": {"p50": 1.0, "p99": 2.0}})


def test_references_are_ratios_to_haproxy_and_stay_out_of_the_verdict() -> None:
    rounds = [measurement(name, r, value) for r in (1, 2, 3) for name, value in
              (("haproxy", 50_000.0), ("mta-ingress", 40_000.0), ("floor", 55_000.0),
               ("floor+8us", 30_000.0))]
    # a reference's trouble is its own: the comparison stays clean
    rounds.append(measurement("floor+8us", 4, 1.0, {"connect": 3}))
    summary = bench.summarise(RUN, rounds)
    assert summary["ratio"] == pytest.approx(0.8)
    assert summary["references"]["floor"]["ratio"] == pytest.approx(1.1)
    assert summary["references"]["floor+8us"]["ratio"] == pytest.approx(0.6)
    assert summary["target"]["verdict"] == "PASS"
    assert len(summary["round_ratios"]) == 3
    text = "\n".join(bench.summary_text(RUN, summary, argparse.Namespace(
        http_connections=64, http_duration=3.0, warmup=1.0, floor=[0.0, 8.0])))
    assert "reference floor/haproxy: 1.10x" in text
    assert "reference floor+8us/haproxy: 0.60x" in text


def test_without_references_the_summary_is_the_comparison() -> None:
    summary = bench.summarise(RUN, [measurement("haproxy", 1, 10.0),
                                    measurement("mta-ingress", 1, 5.0)])
    assert summary["references"] == {}
    assert set(summary["medians"]) == {"haproxy", "mta-ingress"}
    assert summary["target"]["verdict"].startswith("FAIL")


@pytest.mark.parametrize(("text", "burns"), [("0", [0.0]), ("0,8,16", [0.0, 8.0, 16.0]),
                                             ("2.5", [2.5])])
def test_floor_burns(text: str, burns: list[float]) -> None:
    assert bench._burns(text) == burns


@pytest.mark.parametrize("text", ["x", "-1", "8,8", "inf", "nan"])
def test_floor_burns_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        bench._burns(text)


def test_floor_setup_names_and_pins() -> None:
    bare = bench.floor_setup(30000, 30001, {1}, 0.0)
    burned = bench.floor_setup(30002, 30001, {1}, 8.0)
    assert (bare.name, burned.name) == ("floor", "floor+8us")
    assert bare.argv[:3] == ["taskset", "-c", "1"]
    assert bare.argv[-6:] == ["--port", "30000", "--backend-port", "30001", "--burn-us", "0"]
    tls = bench.floor_setup(30003, 30001, {1}, 0.0, Path("/results/certs"))
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
    assert bench.access_log_ends(lines) == {
        "ok": 1, "rejected:tls-handshake-aborted": 1, "rejected:tls-handshake-failed": 1}


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
    m = bench.Measurement("mta-ingress", 1, 1.0, None, {}, {}, 0, ends,
                          {"expected_client_aborts": 128})
    assert bench._abnormal_ends(m) == abnormal
