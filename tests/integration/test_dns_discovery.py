"""Backends found through DNS, end to end: the real ``mta-ingress run``, a real DNS server
(Unbound, changed while the test runs) and real HTTP origins, all on loopback.

Origins that share one dns+a name share one port, on different loopback addresses
(127.0.0.2, 127.0.0.3, ...), as pods behind a headless Service do.
"""

from __future__ import annotations

import collections
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.dns_peer import UnboundServer
from tests.integration.ingress_process import IngressProcess, tcp_config
from tests.integration.origin import EchoOrigin
from tests.integration.peers import free_port
from tests.integration.test_http_proxy import request

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

NAME = "pods.mail.test."


@pytest.fixture
def unbound() -> Iterator[UnboundServer]:
    with UnboundServer() as server:
        yield server


def origins_on_one_port(*names: str) -> list[EchoOrigin]:
    first = EchoOrigin(names[0], host="127.0.0.2")
    return [first] + [EchoOrigin(name, host=f"127.0.0.{index + 3}", bind_port=first.port)
                      for index, name in enumerate(names[1:])]


def ingress_config(port: int, dns: UnboundServer | None, servers: list[str], *,
                   mode: str = "http", workers: int = 1, **backend: object) -> str:
    listener: dict[str, object] = {"bind": [f"127.0.0.1:{port}"], "mode": mode,
                                   "backend": "pods"}
    if mode == "tcp":
        listener["on_backend_down"] = "close"
    return tcp_config(
        {"web": listener},
        {"pods": {"servers": servers, "check_interval": "200ms", "rise": 1, "fall": 1,
                  **backend}},
        timeouts={"drain": "0s", "connect": "1s"}, workers=workers,
    ) + (f'[dns]\nnameservers = ["{dns.nameserver}"]\ntimeout = "500ms"\n' if dns else "")


def origin_of(port: int, path: str = "/") -> str:
    status, _, body = request(port, "GET", path)
    assert status == 200, body
    origin: str = json.loads(body)["origin"]
    return origin


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.05)


class Background:
    """One request in a thread; ``result`` is (status, origin) or the exception."""

    def __init__(self, port: int, path: str) -> None:
        self.result: tuple[int, str] | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str) -> None:
        try:
            status, _, body = request(port, "GET", path)
            self.result = (status, json.loads(body)["origin"])
        except BaseException as error:
            self.result = error

    def join(self) -> tuple[int, str] | BaseException | None:
        self._thread.join(10)
        return self.result


def test_records_added_and_removed_change_the_servers_and_removed_ones_drain(
        tmp_path: Path, unbound: UnboundServer) -> None:
    a, b = origins_on_one_port("a", "b")
    unbound.set(NAME, "A", ["127.0.0.2"])
    port = free_port()
    with a, b, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"])) as ingress:
        assert {origin_of(port) for _ in range(4)} == {"a"}

        unbound.set(NAME, "A", ["127.0.0.2", "127.0.0.3"])
        eventually(lambda: origin_of(port) == "b")  # TTL 1 s: seen within about a second

        # Two requests at once go to the two servers (round robin); both are still running
        # when b leaves the record set.
        slow = [Background(port, "/slow/2.5"), Background(port, "/slow/2.5")]
        eventually(lambda: any(r.target == "/slow/2.5" for r in a.requests)
                   and any(r.target == "/slow/2.5" for r in b.requests))
        unbound.set(NAME, "A", ["127.0.0.2"])
        ingress.wait_for_stderr("removed=127.0.0.3", 5)
        requests_to_b = len(b.requests)
        assert {origin_of(port) for _ in range(6)} == {"a"}
        assert len(b.requests) == requests_to_b
        assert sorted(str(s.join()) for s in slow) == ["(200, 'a')", "(200, 'b')"]


def test_srv_targets_ports_and_weights_and_priorities(tmp_path: Path,
                                                      unbound: UnboundServer) -> None:
    a, b, c = (EchoOrigin(name, host=f"127.0.0.{index + 2}")
               for index, name in enumerate("abc"))
    for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3"), ("c", "127.0.0.4")):
        unbound.set(f"{name}.mail.test.", "A", [address], ttl=30)
    unbound.set("_http._tcp.svc.mail.test.", "SRV", [
        f"10 3 {a.port} a.mail.test.", f"10 1 {b.port} b.mail.test.",
        f"20 1 {c.port} c.mail.test."], ttl=30)
    port = free_port()
    with a, b, c, IngressProcess(tmp_path, ingress_config(
            port, unbound, ["dns+srv://_http._tcp.svc.mail.test"])) as ingress:
        # Weights 3:1 among priority 10; priority 20 unused while they are up.
        assert collections.Counter(origin_of(port) for _ in range(8)) == {"a": 6, "b": 2}
        assert c.requests == []
        a.stop()
        b.stop()
        ingress.wait_for_stderr(f"server=127.0.0.2:{a.port}", 5)
        ingress.wait_for_stderr(f"server=127.0.0.3:{b.port}", 5)
        assert {origin_of(port) for _ in range(3)} == {"c"}


def test_dns_outage_keeps_the_last_good_set(tmp_path: Path, unbound: UnboundServer) -> None:
    [a] = origins_on_one_port("a")
    unbound.set(NAME, "A", ["127.0.0.2"])
    port = free_port()
    with a, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"])) as ingress:
        assert origin_of(port) == "a"
        unbound.stop()
        ingress.wait_for_stderr("dns lookup timed out, keeping the last good set", 5)
        deadline = time.monotonic() + 2.0  # two more TTLs with DNS gone
        while time.monotonic() < deadline:
            assert origin_of(port) == "a"
            time.sleep(0.2)
        assert "error=timeout" in ingress.stderr()


def test_nxdomain_is_logged_kept_for_the_grace_period_then_empties_the_set(
        tmp_path: Path, unbound: UnboundServer) -> None:
    [a] = origins_on_one_port("a")
    unbound.set(NAME, "A", ["127.0.0.2"])
    port = free_port()
    with a, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"], dns_grace="2s")) as ingress:
        assert origin_of(port) == "a"
        unbound.set(NAME, "A", [])
        ingress.wait_for_stderr("dns name does not exist (NXDOMAIN), keeping the last good set",
                                5)
        assert "error=nxdomain" in ingress.stderr()
        assert origin_of(port) == "a"  # within the grace period
        ingress.wait_for_stderr("grace period over, servers removed", 5)
        started = time.monotonic()
        status, _, _ = request(port, "GET", "/")
        assert status == 503
        assert time.monotonic() - started < 0.5  # at once, not after a connect timeout


def test_failing_name_is_logged_once_per_worker_and_change_of_state(
        tmp_path: Path, unbound: UnboundServer) -> None:
    [a] = origins_on_one_port("a")
    port = free_port()

    def lines(ingress: IngressProcess) -> dict[str, list[str]]:
        """Per worker (pid), the messages about the backend, in order."""
        found: dict[str, list[str]] = {}
        for line in ingress.stderr().splitlines():
            if "backend=pods" in line and "server=dns+a://pods.mail.test" in line:
                pid = line.split("pid=", 1)[1].split()[0]
                found.setdefault(pid, []).append(line.split("msg=", 1)[1].split('"')[1])
        return found

    def seen_by_both(ingress: IngressProcess, message: str) -> bool:
        found = lines(ingress)
        return len(found) == 2 and all(message in m for m in (ms[-1] for ms in found.values()))

    # Failed lookups are retried after 1 s, 2 s, 4 s: each retry logged, this would be three
    # lines per worker by the end of the first wait.
    with a, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"], workers=2,
            dns_grace="1m")) as ingress:
        eventually(lambda: seen_by_both(ingress, "NXDOMAIN), no servers yet"))
        time.sleep(3.5)
        unbound.set(NAME, "A", ["127.0.0.2"])
        eventually(lambda: seen_by_both(ingress, "dns servers changed"), 10)
        assert origin_of(port) == "a"
        unbound.set(NAME, "A", [])
        eventually(lambda: seen_by_both(ingress, "NXDOMAIN), keeping the last good set"))
        time.sleep(3.5)
        unbound.set(NAME, "A", ["127.0.0.2"])
        eventually(lambda: seen_by_both(ingress, "dns name answers again"), 10)
        found = lines(ingress)
    assert list(found.values()) == [[
        "dns name does not exist (NXDOMAIN), no servers yet",
        "dns servers changed",
        "dns name does not exist (NXDOMAIN), keeping the last good set",
        "dns name answers again",
    ]] * 2, found


def test_leastconn_sends_new_requests_to_the_less_busy_origin(
        tmp_path: Path, unbound: UnboundServer) -> None:
    a, b = origins_on_one_port("a", "b")
    unbound.set(NAME, "A", ["127.0.0.2", "127.0.0.3"], ttl=30)
    port = free_port()
    with a, b, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"], balance="leastconn")):
        held = Background(port, "/slow/2")
        eventually(lambda: len(a.requests) + len(b.requests) == 1)
        busy = "a" if a.requests else "b"
        idle = "b" if busy == "a" else "a"
        assert [origin_of(port) for _ in range(4)] == [idle] * 4
        assert held.join() == (200, busy)

        # Every way an exchange ends gives its count back: a backend reset mid-response and a
        # client that leaves mid-request; if one leaked, that origin would look busy forever.
        for _ in range(2):
            with pytest.raises((http.client.HTTPException, OSError)):
                request(port, "GET", "/reset")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /slow/0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
            eventually(lambda: any(r.target == "/slow/0.3" for r in a.requests + b.requests))
        time.sleep(0.5)
        assert collections.Counter(origin_of(port) for _ in range(6)) == {"a": 3, "b": 3}


def test_leastconn_counts_tcp_sessions(tmp_path: Path) -> None:
    a, b = origins_on_one_port("a", "b")
    port = free_port()
    servers = [f"127.0.0.2:{a.port}", f"127.0.0.3:{a.port}"]
    with a, b, IngressProcess(tmp_path, ingress_config(port, None, servers, mode="tcp",
                                                       balance="leastconn")) as ingress:
        ended = 0

        def session(path: str = "/") -> str:
            """One relayed session, returned once the ingress has ended it (its access log
            line is written right after its count is given back)."""
            nonlocal ended
            origin = origin_of(port, path)
            ended += 1
            assert len(ingress.access_lines(ended)) >= ended
            return origin

        held = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        held.request("GET", "/")
        busy = json.loads(held.getresponse().read())["origin"]
        idle = "b" if busy == "a" else "a"
        assert [session() for _ in range(3)] == [idle] * 3
        held.close()
        ended += 1
        with pytest.raises((http.client.HTTPException, OSError)):
            request(port, "GET", "/reset")  # a backend reset ends a session too
        ended += 1
        assert len(ingress.access_lines(ended)) >= ended
        assert collections.Counter(session() for _ in range(4)) == {"a": 2, "b": 2}


def test_discovered_servers_are_health_checked(tmp_path: Path, unbound: UnboundServer) -> None:
    a, b = origins_on_one_port("a", "b")
    unbound.set(NAME, "A", ["127.0.0.2", "127.0.0.3"], ttl=30)
    port = free_port()
    with a, IngressProcess(tmp_path, ingress_config(
            port, unbound, [f"dns+a://pods.mail.test:{a.port}"])) as ingress:
        with b:
            assert {origin_of(port) for _ in range(4)} == {"a", "b"}
        ingress.wait_for_stderr(
            f'msg="server down" backend=pods server=127.0.0.3:{a.port}', 5)
        assert {origin_of(port) for _ in range(4)} == {"a"}
