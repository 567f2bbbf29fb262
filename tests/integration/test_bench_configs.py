"""The HAProxy configurations the benchmark writes (loadtest/bench_targets.py) are ones HAProxy
accepts (``haproxy -c``), with and without the contract's per-request log (--haproxy-log), for
TCP, HTTP and HTTPS; and mta-ingress's are ones its ``check-config`` accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from loadtest.bench_targets import certificate_dir, haproxy_setup, ingress_setup
from tests.integration.peers import require_binary


@pytest.mark.parametrize("log", ["off", "file", "errors"])
@pytest.mark.parametrize("kind", ["tcp", "http", "https"])
def test_haproxy_accepts_the_bench_configuration(tmp_path: Path, kind: str, log: str) -> None:
    haproxy = require_binary("haproxy")
    certs = certificate_dir(tmp_path, "https-handshake-ecdsa") if kind == "https" else None
    setup = haproxy_setup(tmp_path, 30000, 30001, None, http=kind != "tcp", certs=certs,
                                log=log)
    result = subprocess.run([haproxy, "-c", "-f", str(setup.config_path)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = setup.config_path.read_text()
    logging = "log stdout format raw local0" in text
    assert logging == (log != "off")
    assert (setup.access_log is not None) == (log != "off")
    if logging:
        assert f"option {'tcplog' if kind == 'tcp' else 'httplog'}" in text
    assert ("option dontlog-normal" in text) == (log == "errors")


@pytest.mark.parametrize("access_log", ["file", "errors"])
@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_mta_ingress_accepts_the_bench_configuration(tmp_path: Path, kind: str,
                                                     access_log: str) -> None:
    setup = ingress_setup(tmp_path, 30000, 30001, None, 1, access_log, http=kind == "http")
    result = subprocess.run([*setup.argv[:-3], "check-config", "--config",
                             str(setup.config_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("log_normal = false" in setup.config_path.read_text()) == (access_log == "errors")
