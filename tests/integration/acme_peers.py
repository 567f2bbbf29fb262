"""Let's Encrypt's test servers, real and on loopback: Pebble (an ACME CA) and
pebble-challtestsrv (its companion DNS server, whose records a test changes over HTTP).

Pebble resolves every name through the challtestsrv instance started beside it, and validates
HTTP-01 challenges by connecting to the resolved address on ``http_port``: the test points that
at the ingress's ``http`` listener. Both are Debian's ``pebble`` package.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import trustme

from tests.integration.peers import free_port, require_binary, wait_for_port


class _ServerProcess:
    """A peer started by ``__enter__``; stopped (SIGTERM, then waited for) on exit."""

    process: subprocess.Popen[bytes] | None = None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


class ChallTestSrv(_ServerProcess):
    """pebble-challtestsrv as a DNS server on 127.0.0.1 with only A records by default."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("pebble-challtestsrv")
        self.dns_port = free_port()
        self.management_port = free_port()
        self.log_path = workdir / "challtestsrv.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChallTestSrv:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-dns01", f"127.0.0.1:{self.dns_port}",
                 "-management", f"127.0.0.1:{self.management_port}",
                 "-http01", "", "-https01", "", "-tlsalpn01", ""],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_port("127.0.0.1", self.management_port)
        # Pebble would try ::1 first for any name; the ingress listens on 127.0.0.1 only.
        self.command("set-default-ipv6", {"ip": ""})
        return self

    def command(self, name: str, body: dict[str, object]) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.management_port}/{name}", data=json.dumps(body).encode(),
            method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200, (name, response.status)

    def set_a(self, host: str, addresses: list[str]) -> None:
        self.command("clear-a", {"host": host})
        if addresses:
            self.command("add-a", {"host": host, "addresses": addresses})


class Pebble(_ServerProcess):
    """Pebble with its own HTTPS certificate from a trustme CA (``ca_file``), no random sleeps
    or nonce rejections (tests must not be flaky), and an optional certificate lifetime."""

    def __init__(self, workdir: Path, dns: ChallTestSrv, http_port: int,
                 validity_seconds: int | None = None) -> None:
        self.binary = require_binary("pebble")
        self.port = free_port()
        self.management_port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "pebble.log"
        self.ca = trustme.CA(organization_name="pebble listener test CA")
        self.ca_file = workdir / "pebble-listener-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        listener = self.ca.issue_cert("127.0.0.1", "localhost")
        certificate, key = workdir / "pebble-cert.pem", workdir / "pebble-key.pem"
        listener.cert_chain_pems[0].write_to_path(str(certificate))
        listener.private_key_pem.write_to_path(str(key))
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(certificate), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }
        if validity_seconds is not None:
            settings["certificateValidityPeriod"] = validity_seconds
        self.config_path = workdir / "pebble-config.json"
        self.config_path.write_text(json.dumps({"pebble": settings}))
        self.dns = dns
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def __enter__(self) -> Pebble:
        environment = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                       "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-config", str(self.config_path),
                 "-dnsserver", f"127.0.0.1:{self.dns.dns_port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environment, cwd=self.workdir)
        wait_for_port("127.0.0.1", self.port)
        wait_for_port("127.0.0.1", self.management_port)
        return self

    def root_pem(self) -> bytes:
        """The root Pebble made at start, which its issued chains lead to."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bytes(response.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def orders(self) -> int:
        """New-order requests Pebble has received (its log names each request's path)."""
        return sum(1 for line in self.log().splitlines()
                   if "POST /order-plz" in line)

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the Pebble log:\n{self.log()}")
            time.sleep(0.1)
