"""loadtest/bench_scenarios.py: which ends of a measurement are abnormal."""

from __future__ import annotations

import pytest

from loadtest.bench_scenarios import Measurement, abnormal_ends


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
    m = Measurement("mta-ingress", 1, 1.0, None, {}, {}, 0, ends,
                          {"expected_client_aborts": 128})
    assert abnormal_ends(m) == abnormal
