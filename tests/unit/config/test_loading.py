"""ingress.config.loading and layers: presets, file, environment, flags and ``--set`` merged, and
who wins.

Every ``config.load`` call passes an explicit ``environ`` so that the real environment of the
test run never leaks in.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ingress import config
from ingress.config import Address
from tests.unit.config.common import PRESET_LISTENERS

# --- merging into the preset ---------------------------------------------------------------------


def test_file_bind_keeps_the_preset_backend(write: Any) -> None:
    path = write('[listeners.smtp587]\nbind = ["127.0.0.1:2587"]\n')
    effective = config.load(path, environ={})
    smtp587 = effective.listeners["smtp587"]
    assert smtp587.bind == (Address("127.0.0.1", 2587),)
    assert smtp587.backend == "mta-smtp"
    assert smtp587.mode == "tcp"
    assert smtp587.accept_proxy is False
    default = config.load(None, environ={})
    assert {name: lst for name, lst in effective.listeners.items() if name != "smtp587"} == {
        name: lst for name, lst in default.listeners.items() if name != "smtp587"}
    assert effective.backends == default.backends


def test_file_backend_table_merges_key_by_key(write: Any) -> None:
    path = write('[backends.mta-smtp]\nsend_proxy = "v2"\n')
    backend = config.load(path, environ={}).backends["mta-smtp"]
    assert backend.send_proxy == "v2"
    assert backend.servers == (Address("ga1-ingress-mta", 587),)


def test_disabled_listener_leaves_enabled_listeners(write: Any) -> None:
    path = write("[listeners.smtp25-proxied]\nenabled = false\n")
    effective = config.load(path, environ={})
    assert [lst.name for lst in effective.enabled_listeners] == [
        name for name in PRESET_LISTENERS if name != "smtp25-proxied"]
    assert effective.listeners["smtp25-proxied"].enabled is False
    assert effective.listeners["smtp25-proxied"].backend == "event-tracker-smtp"


def test_disabled_listener_is_not_checked_for_backend_or_bind_clash(write: Any) -> None:
    path = write('[listeners.smtp25]\nenabled = false\nbackend = "gone"\n'
                 '[listeners.other]\nbind = ["0.0.0.0:10025"]\nbackend = "mta-smtp"\n')
    effective = config.load(path, environ={})
    assert effective.listeners["other"].bind == (Address("0.0.0.0", 10025),)
    assert "smtp25" not in {lst.name for lst in effective.enabled_listeners}


def test_file_adds_listener_and_backend_next_to_the_preset(write: Any) -> None:
    path = write('[listeners.alt]\nbind = [":2525", "[::]:2525"]\nbackend = "relay"\n'
                 'on_backend_down = "close"\n'
                 '[backends.relay]\nservers = ["relay.example:25", "10.0.0.7:25"]\n')
    effective = config.load(path, environ={})
    assert list(effective.listeners) == [*PRESET_LISTENERS, "alt"]
    alt = effective.listeners["alt"]
    assert alt.bind == (Address("0.0.0.0", 2525), Address("::", 2525))
    assert alt.on_backend_down == "close"
    assert effective.backends["relay"].servers == (Address("relay.example", 25),
                                                   Address("10.0.0.7", 25))
    assert effective.backends["relay"].send_proxy == "none"


def test_config_file_from_environment(write: Any) -> None:
    path = write("workers = 3\n")
    assert config.load(None, environ={"MTA_INGRESS_CONFIG": str(path)}).workers == 3


def test_explicit_path_beats_config_variable(write: Any) -> None:
    chosen = write("workers = 3\n", "chosen.toml")
    other = write("workers = 5\n", "other.toml")
    assert config.load(chosen, environ={"MTA_INGRESS_CONFIG": str(other)}).workers == 3


def test_environment_set_and_timeouts_variables() -> None:
    effective = config.load(None, environ={
        "MTA_INGRESS_LOG_FORMAT": "json",
        "MTA_INGRESS_TIMEOUTS_CONNECT": "2s",
        "MTA_INGRESS_TIMEOUTS_DRAIN": "0s",
        "MTA_INGRESS_SET": 'listeners.smtp587.bind=["127.0.0.1:2587"]; '
                           "backends.mta-smtp.send_proxy=v2\nlisteners.http.enabled=false",
    })
    assert effective.log_format == "json"
    assert effective.timeouts.connect == 2.0
    assert effective.timeouts.drain == 0.0
    assert effective.listeners["smtp587"].bind == (Address("127.0.0.1", 2587),)
    assert effective.listeners["smtp587"].backend == "mta-smtp"
    assert effective.backends["mta-smtp"].send_proxy == "v2"
    assert effective.listeners["http"].enabled is False


def test_set_assignments_parse_toml_values() -> None:
    effective = config.load(None, environ={}, assignments=[
        'listeners.smtp587.bind=["127.0.0.1:2587", "[::1]:2587"]',
        "listeners.smtp25.bind=127.0.0.1:2525",
        "listeners.https.enabled=false",
        "timeouts.grace = 45s",
        "workers=7",
    ])
    assert effective.listeners["smtp587"].bind == (Address("127.0.0.1", 2587),
                                                   Address("::1", 2587))
    assert effective.listeners["smtp25"].bind == (Address("127.0.0.1", 2525),)
    assert effective.listeners["https"].enabled is False
    assert effective.timeouts.grace == 45.0
    assert effective.workers == 7


# --- precedence: preset < file < environment < flags < --set -------------------------------------

LAYER_COMBINATIONS = list(itertools.product([False, True], repeat=4))


def _combination_id(combo: tuple[bool, ...]) -> str:
    names = [name for name, on in zip(("file", "env", "flags", "set"), combo, strict=True) if on]
    return "+".join(names) or "defaults"


@pytest.mark.parametrize("combo", LAYER_COMBINATIONS, ids=_combination_id)
def test_workers_precedence(write: Any, combo: tuple[bool, bool, bool, bool]) -> None:
    use_file, use_env, use_flags, use_set = combo
    effective = config.load(
        write("workers = 1\n") if use_file else None,
        environ={"MTA_INGRESS_WORKERS": "2"} if use_env else {},
        overrides={"workers": 3, "preset": None, "release": None} if use_flags else None,
        assignments=["workers=4"] if use_set else None,
    )
    expected = max([0] + [value for value, on in zip((1, 2, 3, 4), combo, strict=True) if on])
    assert effective.workers == expected


@pytest.mark.parametrize("combo", LAYER_COMBINATIONS, ids=_combination_id)
def test_release_precedence(write: Any, combo: tuple[bool, bool, bool, bool]) -> None:
    use_file, use_env, use_flags, use_set = combo
    effective = config.load(
        write('release = "r-file"\n') if use_file else None,
        environ={"MTA_INGRESS_RELEASE": "r-env"} if use_env else {},
        overrides={"release": "r-flag"} if use_flags else None,
        assignments=["release=r-set"] if use_set else None,
    )
    chosen = [name for name, on in zip(("r-file", "r-env", "r-flag", "r-set"), combo,
                                       strict=True) if on]
    expected = chosen[-1] if chosen else "ga1"
    assert effective.release == expected
    assert str(effective.backends["mta-smtp"].servers[0]) == f"{expected}-ingress-mta:587"


@pytest.mark.parametrize("combo", list(itertools.product([False, True], repeat=3)),
                         ids=lambda c: "+".join(n for n, on in zip(("file", "env", "set"), c,
                                                                   strict=True) if on) or "none")
def test_timeout_precedence(write: Any, combo: tuple[bool, bool, bool]) -> None:
    use_file, use_env, use_set = combo
    effective = config.load(
        write('[timeouts]\ngrace = "1m"\nconnect = "7s"\n') if use_file else None,
        environ={"MTA_INGRESS_TIMEOUTS_GRACE": "2m"} if use_env else {},
        assignments=["timeouts.grace=3m"] if use_set else None,
    )
    chosen = [value for value, on in zip((60.0, 120.0, 180.0), combo, strict=True) if on]
    assert effective.timeouts.grace == (chosen[-1] if chosen else 300.0)
    assert effective.timeouts.connect == (7.0 if use_file else 5.0)
    assert effective.timeouts.tcp_idle == 300.0


def test_later_layer_repairs_an_earlier_bad_value(write: Any) -> None:
    path = write('workers = "x"\n[timeouts]\ngrace = "soon"\n')
    effective = config.load(path, environ={"MTA_INGRESS_WORKERS": "2",
                                           "MTA_INGRESS_TIMEOUTS_GRACE": "1m"})
    assert effective.workers == 2
    assert effective.timeouts.grace == 60.0


def test_flags_set_to_none_are_ignored(write: Any) -> None:
    path = write('workers = 2\nrelease = "prod"\n')
    effective = config.load(path, environ={},
                            overrides={"workers": None, "release": None, "preset": None})
    assert (effective.workers, effective.release, effective.preset) == (2, "prod", "greenarrow")


def test_default_timeouts() -> None:
    timeouts = config.load(None, environ={}).timeouts
    assert timeouts == config.Timeouts(connect=5.0, tcp_idle=300.0, proxy_header=5.0, drain=10.0,
                                       grace=300.0)
