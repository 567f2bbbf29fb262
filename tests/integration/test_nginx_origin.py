"""loadtest/nginx_origin.py with the real nginx: the answers of the stub origin, and counters
that count the load only (not the wrapper's own status queries nor its start-up probe)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from tests.integration.peers import free_port, require_binary

ROOT = Path(__file__).resolve().parents[2]


def test_nginx_answers_as_the_stub_origin_and_counts_only_the_load() -> None:
    require_binary("nginx")
    port = free_port()
    origin = subprocess.Popen([sys.executable, str(ROOT / "loadtest" / "nginx_origin.py"), "http",
                               "--port", str(port)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert origin.stdin is not None
    assert origin.stdout is not None
    try:
        assert origin.stdout.readline() == f"port {port}\n".encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for path in ("/click/abc?x=1", "/open/1", "/1m/click/abc?x=1"):
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            if path.startswith("/1m"):
                assert body == b"x" * (1 << 20)
            else:
                assert body == b"ok: served by the benchmark origin\n"
        connection.close()
        for _ in range(2):  # a query does not count itself, nor the one before
            origin.stdin.write(b"stats\n")
            origin.stdin.flush()
            stats = json.loads(origin.stdout.readline())
            assert (stats["sessions"], stats["requests"]) == (1, 3)
    finally:
        _, stderr = origin.communicate(timeout=15)  # stdin closed: the wrapper stops nginx
    assert origin.returncode == 0, stderr
