"""The load test's runner end to end, short: the ingress, the egress tier, the counting stubs and
locust on loopback, then the exactly-once comparison (``make loadtest`` at a small scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtest import egress_run

ROOT = Path(__file__).resolve().parents[2]
# Away from the demo's (20000) and make loadtest's (24000) ports.
BASE_PORT = 27000
EGRESS_MESSAGES = ("socks5-bind message", "socks5-connect message", "forward-v2 message")


def run(out: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--base-port", str(BASE_PORT), "--out", str(out),
         *argv], cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)


def test_short_run_passes_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run(out, "--duration", "8", "--users", "10", "--spawn-rate", "10",
                 # equal weights: with 10 users, every class gets two
                 "--", "--weight-tracking", "1", "--weight-api", "1", "--weight-smtp", "1",
                 "--weight-inbound", "1", "--weight-egress", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    for name in ("25 message", "587 message", "send.json", "open http", *EGRESS_MESSAGES):
        assert name in result.stdout
    assert "smtp  mx " in result.stdout
    report = json.loads((out / "report.json").read_text())
    comparison = report["comparison"]
    assert comparison["passed"]
    assert comparison["sent_ok"] > 50
    assert comparison["received"] == comparison["sent_ok"]


@pytest.mark.parametrize("fault", ["egress-rolling", "egress-restart"])
def test_egress_update_delivers_every_message_once_from_its_source(
        tmp_path: Path, fault: str) -> None:
    out = tmp_path / "run"
    result = run(out, "--scenario", "egress", "--fault", fault, "--duration", "8",
                 "--users", "6", "--spawn-rate", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    for name in EGRESS_MESSAGES:
        assert name in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["problems"] == []
    assert report["fault"]["error"] is None
    assert report["fault"]["windows"] == []  # nothing is excused
    notes = " ".join(report["fault"]["notes"])
    assert "delivered its message after its listeners closed" in notes
    assert "exited 0" in notes
    comparison = report["comparison"]
    assert comparison["passed"]
    assert comparison["sent_ok"] > 50
    assert comparison["sent_failed"] == 0
    assert comparison["received"] == comparison["sent_ok"]
    if fault == "egress-restart":
        # Refused while no egress process listened: retried, and still delivered once.
        assert "connections were refused meanwhile" in notes
        assert comparison["retried_messages"] > 0
    # The canary's message is in the ledger like locust's, and every source was used.
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert [r["name"] for r in ledger].count("canary message") == 1
    assert set(Counter(r["client"] for r in ledger)) == set(egress_run.SOURCES)
    # Both egress processes carried sessions: the second took over.
    for name in ("egress", "egress-2"):
        assert "kind=egress" in (out / f"{name}.access.log").read_text(), name
