"""Server rotation and the resolver cache.

Only names from /etc/hosts are looked up: a test must not send DNS queries off the machine.
Failure handling (keep the last good answer) is tested with a real nameserver on loopback when DNS
discovery lands."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from routing.backends import RESOLVE_TTL, Backend, Resolver, ServerHealth


def test_rotation_starts_one_further_each_time() -> None:
    backend = Backend("b", [("10.0.0.1", 25), ("10.0.0.2", 25), ("10.0.0.3", 25)], Resolver())
    firsts = [backend.rotation()[0][0] for _ in range(6)]
    assert firsts == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2
    assert backend.rotation() == [("10.0.0.1", 25), ("10.0.0.2", 25), ("10.0.0.3", 25)]


def test_ip_literals_are_not_resolved() -> None:
    async def endpoints() -> list[tuple[str, int, str]]:
        backend = Backend("b", [("::1", 587), ("127.0.0.1", 25)], Resolver())
        return [(e.host, e.port, e.server) for e in await backend.endpoints()]

    assert asyncio.run(endpoints()) == [("::1", 587, "[::1]:587"),
                                        ("127.0.0.1", 25, "127.0.0.1:25")]


def test_names_are_resolved_and_cached() -> None:
    now = [0.0]
    resolver = Resolver(clock=lambda: now[0])

    async def resolve() -> list[str]:
        return await resolver.resolve("localhost", 25)

    first = asyncio.run(resolve())
    assert "127.0.0.1" in first
    assert first[0] == "127.0.0.1"  # IPv4 first
    assert asyncio.run(resolve()) == first


class ScriptedLoop(asyncio.SelectorEventLoop):
    """A real event loop whose getaddrinfo answers from ``answers`` (addresses, or a gaierror
    code): failures and recoveries on cue, and no query leaves the machine."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, list[str] | int] = {}

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        answer = self.answers[host]
        if isinstance(answer, int):
            raise socket.gaierror(answer, "scripted failure")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in answer]


def test_lookup_failures_are_logged_per_backend_once_per_change_of_state(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    resolver = Resolver(clock=lambda: now[0])
    loop = ScriptedLoop()

    def resolve(backend: str) -> list[str]:
        return loop.run_until_complete(resolver.resolve("mta.svc", 587, backend))

    debug_lines = [0]

    def logged() -> list[tuple[str, str]]:
        """The lines an operator sees (INFO and up) since the last call."""
        lines = [(record.levelname, record.getMessage()) for record in caplog.records
                 if record.levelno >= logging.INFO]
        debug_lines[0] += sum(record.levelno == logging.DEBUG for record in caplog.records)
        caplog.clear()
        return lines

    try:
        with caplog.at_level(logging.DEBUG, logger="mta_ingress.backends"):
            loop.answers["mta.svc"] = socket.EAI_NONAME
            for _ in range(10):  # what health checks and sessions do: cached and new failures
                assert resolve("mta-smtp") == []
                now[0] += 0.7
            [(level, line)] = logged()
            assert level == "WARNING"
            assert 'msg="backend server name does not resolve, server skipped"' in line
            assert "backend=mta-smtp server=mta.svc:587 name=mta.svc error=nxdomain" in line
            assert debug_lines[0] == 9  # the repeats are there for whoever turns debug on

            assert resolve("mta-http") == []  # another backend of the same server hears it too
            assert [level for level, _ in logged()] == ["WARNING"]

            now[0] += 5
            loop.answers["mta.svc"] = socket.EAI_AGAIN  # it fails differently now
            assert resolve("mta-smtp") == []
            [(level, line)] = logged()
            assert level == "WARNING"
            assert "backend=mta-smtp" in line
            assert "error=temporary" in line

            now[0] += 5
            loop.answers["mta.svc"] = ["10.0.0.7"]
            for _ in range(3):
                assert resolve("mta-smtp") == ["10.0.0.7"]
            assert resolve("mta-http") == ["10.0.0.7"]  # from the cache: back for it too
            assert logged() == [
                ("INFO", 'msg="backend server name resolves again" backend=mta-smtp '
                         "server=mta.svc:587 name=mta.svc addresses=10.0.0.7"),
                ("INFO", 'msg="backend server name resolves again" backend=mta-http '
                         "server=mta.svc:587 name=mta.svc addresses=10.0.0.7")]

            now[0] += RESOLVE_TTL + 1
            loop.answers["mta.svc"] = socket.EAI_NONAME
            assert resolve("mta-smtp") == ["10.0.0.7"]  # the last good answer
            assert resolve("mta-smtp") == ["10.0.0.7"]
            [(level, line)] = logged()
            assert level == "WARNING"
            assert "does not resolve, using the last answer" in line
    finally:
        loop.close()


def test_health_falls_after_three_failures_and_rises_after_two_successes() -> None:
    health = ServerHealth(rise=2, fall=3)
    assert [health.record(False) for _ in range(3)] == [False, False, True]
    assert health.up is False
    assert [health.record(True), health.record(False), health.record(True)] == [False] * 3
    assert health.up is False  # a failure in between restarts the count
    assert health.record(True) is True
    assert health.up is True


def test_down_servers_are_skipped_and_all_down_means_nothing_to_try() -> None:
    backend = Backend("b", [("10.0.0.1", 80), ("10.0.0.2", 80)], Resolver(), fall=1)
    backend.record_check("10.0.0.1:80", False)
    assert {e.host for e in backend.static_endpoints() or []} == {"10.0.0.2"}
    backend.record_check("10.0.0.2:80", False)
    assert backend.static_endpoints() == []
