"""A real DNS server for the discovery tests: Unbound on 127.0.0.1, authoritative for ``test.``
from its ``local-data``, changed while it runs with ``unbound-control``.

Unbound answers with the TTLs given, serves SRV records, and answers NXDOMAIN for names under
``test.`` it has no data for.  Every other name is refused (``local-zone: "." refuse``), so
nothing a test asks can leave the machine.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.integration.peers import DEFAULT_TIMEOUT, free_port, require_binary

CONFIG = """\
server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{directory}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "." refuse
  local-zone: "test." static
remote-control:
  control-enable: yes
  control-use-cert: no
  control-interface: 127.0.0.1
  control-port: {control_port}
"""


class UnboundServer:
    def __init__(self) -> None:
        self._unbound = require_binary("unbound")
        self._control = require_binary("unbound-control")
        self._directory = Path(tempfile.mkdtemp(prefix="unbound-"))
        self.config_path = self._directory / "unbound.conf"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.config_path.write_text(CONFIG.format(port=self.port, directory=self._directory,
                                                  control_port=free_port()))
        log_path = self._directory / "unbound.log"
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen([self._unbound, "-d", "-c", str(self.config_path)],
                                            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"unbound exited: {log_path.read_text(errors='replace')}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError("unbound did not answer")
            time.sleep(0.05)

    def _answers(self) -> bool:
        query = dns.message.make_query("probe.test.", "A")
        try:
            response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
        except (OSError, dns.exception.Timeout):
            return False
        return response.rcode() == dns.rcode.NXDOMAIN

    def control(self, *args: str, stdin: str | None = None) -> None:
        result = subprocess.run([self._control, "-c", str(self.config_path), *args],
                                input=stdin.encode() if stdin is not None else None,
                                capture_output=True, timeout=DEFAULT_TIMEOUT, check=False)
        if result.returncode != 0 or b"error" in result.stdout:
            raise RuntimeError(f"unbound-control {args}: {result.stdout!r} {result.stderr!r}")

    def set(self, name: str, rdtype: str, values: list[str], ttl: int = 1) -> None:
        """``name`` now has exactly these records of this type (none: the name is gone)."""
        self.control("local_data_remove", name)
        if values:
            self.control("local_datas", stdin="".join(
                f"{name} {ttl} IN {rdtype} {value}\n" for value in values))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def __enter__(self) -> UnboundServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
