"""Server rotation and the resolver cache.

Only names from /etc/hosts are looked up: a test must not send DNS queries off the machine.
Failure handling (keep the last good answer) is tested with a real nameserver on loopback when DNS
discovery lands."""

from __future__ import annotations

import asyncio

from routing.backends import Backend, Resolver, ServerHealth


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
