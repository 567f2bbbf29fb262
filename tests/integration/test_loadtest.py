"""The load test's runner end to end, short: the ingress, the counting stubs and locust on
loopback, then the exactly-once comparison (``make loadtest`` at a small scale)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Away from the demo's (20000) and make loadtest's (24000) ports.
BASE_PORT = 27000


def test_short_run_passes_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.run", "--duration", "8", "--users", "8",
         "--spawn-rate", "8", "--base-port", str(BASE_PORT), "--out", str(out),
         # equal weights: with 8 users, every class gets two
         "--", "--weight-tracking", "1", "--weight-api", "1", "--weight-smtp", "1",
         "--weight-inbound", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout
    for name in ("25 message", "587 message", "send.json", "open http"):
        assert name in result.stdout
    report = json.loads((out / "report.json").read_text())
    comparison = report["comparison"]
    assert comparison["passed"]
    assert comparison["sent_ok"] > 50
    assert comparison["received"] == comparison["sent_ok"]
