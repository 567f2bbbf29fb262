"""ingress.config.validation: one problem per row, every problem of every layer at once, blamed on
the layer that set it.

Every ``config.load`` call passes an explicit ``environ`` so that the real environment of the
test run never leaks in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ingress import config
from ingress.config import Address, ConfigError
from tests.unit.config.common import (
    LISTENER_KEYS,
    PRESET_BACKENDS,
    PRESET_LISTENERS,
    TOP_KEYS,
    WORKERS,
    problems_of,
)

# --- validation: one problem per row -------------------------------------------------------------

FILE_PROBLEMS: list[tuple[str, str, str]] = [
    ("unknown-top-key", 'colour = "blue"\n',
     f"colour: unknown key; known keys here: {TOP_KEYS}"),
    ("unknown-tls-key", '[tls]\ncrt = "/x"\n',
     "tls.crt: unknown key; known keys here: acme, cert_dir, default_cert, handshake_timeout, "
     "poll_interval, self_signed_names"),
    ("admin-unknown-key", '[admin]\nport = 9000\n',
     "admin.port: unknown key; known keys here: bind, enabled, metrics_dir"),
    ("admin-on-a-listener-port", '[admin]\nbind = ["0.0.0.0:10080"]\n',
     "admin.bind[0]: 0.0.0.0:10080 is already bound by listener 'http'"),
    ("acme-unknown-key", '[tls.acme]\ndomain = "a.test"\n',
     "tls.acme.domain: unknown key; known keys here: ca_bundle, directory, domains, email, "
     "enabled, expected_addresses, key_type, retry_initial, retry_max"),
    ("acme-enabled-without-domains", "[tls.acme]\nenabled = true\n",
     "tls.acme.domains: is needed when tls.acme.enabled is true"),
    ("acme-wildcard", '[tls.acme]\ndomains = ["*.mail.test"]\n',
     "tls.acme.domains: must be a list of DNS names (no wildcards: HTTP-01 cannot validate "
     "them)"),
    ("acme-twice", '[tls.acme]\ndomains = ["a.mail.test", "A.mail.test"]\n',
     "tls.acme.domains: lists a name twice"),
    ("acme-http-directory", '[tls.acme]\ndirectory = "http://ca.test/dir"\n',
     "tls.acme.directory: must be \"production\", \"staging\" or the https:// URL of an ACME "
     "directory (RFC 8555 requires HTTPS)"),
    ("acme-email", '[tls.acme]\nemail = "postmaster"\n',
     "tls.acme.email: must be an e-mail address"),
    ("acme-expected", '[tls.acme]\nexpected_addresses = ["mail.test"]\n',
     "tls.acme.expected_addresses: must be a list of IP addresses"),
    ("acme-key-type", '[tls.acme]\nkey_type = "dsa"\n',
     "tls.acme.key_type: must be one of 'ecdsa', 'rsa', not 'dsa'"),
    ("tls-default-cert-path", '[tls]\ndefault_cert = "a/b.pem"\n',
     "tls.default_cert: must be the name of a file in tls.cert_dir"),
    ("tls-poll-zero", '[tls]\npoll_interval = "0s"\n',
     "tls.poll_interval: must be longer than zero"),
    ("tls-self-signed-names", '[tls]\nself_signed_names = ["bad name"]\n',
     "tls.self_signed_names: must be a list of DNS names"),
    ("tls-on-tcp-listener", "[listeners.smtp25]\ntls = true\n",
     "listeners.smtp25.tls: TLS is terminated on http listeners only; a tcp listener relays "
     "TLS (STARTTLS) end to end"),
    ("unknown-listener-key", "[listeners.smtp25]\nport = 25\n",
     f"listeners.smtp25.port: unknown key; known keys here: {LISTENER_KEYS}"),
    ("unknown-backend-key", "[backends.mta-smtp]\nweight = 2\n",
     "backends.mta-smtp.weight: unknown key; known keys here: balance, check, check_interval, "
     "dns_grace, dns_max_ttl, dns_min_ttl, fall, rise, send_proxy, servers"),
    ("unknown-timeout-key", '[timeouts]\nclient = "1m"\n',
     "timeouts.client: unknown key; known keys here: connect, drain, grace, http_keep_alive, "
     "http_request, proxy_header, server, socks_handshake, tcp_idle"),
    ("workers-negative", "workers = -1\n", f"workers: {WORKERS} -1"),
    ("workers-string", 'workers = "x"\n', f"workers: {WORKERS} 'x'"),
    ("workers-bool", "workers = true\n", f"workers: {WORKERS} True"),
    ("workers-float", "workers = 2.5\n", f"workers: {WORKERS} 2.5"),
    ("workers-too-many", "workers = 1025\n", f"workers: {WORKERS} 1025"),
    ("duration-unit", '[timeouts]\nconnect = "5 parsecs"\n',
     "timeouts.connect: '5 parsecs' is not a duration like 500ms, 5s, 1m or 1h"),
    ("duration-empty", '[timeouts]\ntcp_idle = ""\n',
     "timeouts.tcp_idle: '' is not a duration like 500ms, 5s, 1m or 1h"),
    ("duration-number", "[timeouts]\ngrace = 5\n",
     'timeouts.grace: must be a duration string like "5s", not a number'),
    ("duration-zero-connect", '[timeouts]\nconnect = "0s"\n',
     "timeouts.connect: must be longer than zero"),
    ("duration-zero-tcp-idle", '[timeouts]\ntcp_idle = "0ms"\n',
     "timeouts.tcp_idle: must be longer than zero"),
    ("duration-zero-proxy-header", '[timeouts]\nproxy_header = "0m"\n',
     "timeouts.proxy_header: must be longer than zero"),
    ("duration-zero-grace", '[timeouts]\ngrace = "0h"\n',
     "timeouts.grace: must be longer than zero"),
    ("timeouts-not-table", 'timeouts = "5s"\n', "timeouts: must be a table, not a string"),
    ("log-format", 'log_format = "xml"\n',
     "log_format: must be one of 'logfmt', 'json', not 'xml'"),
    ("log-normal", 'log_normal = "no"\n', "log_normal: must be true or false, not a string"),
    ("release-name", 'release = "bad release"\n',
     "release: must be a name like ga1, not 'bad release'"),
    ("release-number", "release = 7\n", "release: must be a name like ga1, not 7"),
    ("unknown-preset", 'preset = "haproxy"\n',
     "preset: unknown preset 'haproxy'; choose one of greenarrow, kumomta, egress, none"),
    ("bind-no-port", '[listeners.smtp25]\nbind = ["0.0.0.0"]\n',
     "listeners.smtp25.bind[0]: '0.0.0.0' has no port: write host:port"),
    ("bind-port-0", '[listeners.smtp25]\nbind = ["0.0.0.0:0"]\n',
     "listeners.smtp25.bind[0]: '0.0.0.0:0': the port must be a number from 1 to 65535"),
    ("bind-port-65536", '[listeners.smtp25]\nbind = ["0.0.0.0:65536"]\n',
     "listeners.smtp25.bind[0]: '0.0.0.0:65536': the port must be a number from 1 to 65535"),
    ("bind-port-text", '[listeners.smtp25]\nbind = ["0.0.0.0:smtp"]\n',
     "listeners.smtp25.bind[0]: '0.0.0.0:smtp': the port must be a number from 1 to 65535"),
    ("bind-hostname", '[listeners.smtp25]\nbind = ["localhost:10025"]\n',
     "listeners.smtp25.bind[0]: 'localhost:10025': a listener binds an IP address, "
     "not 'localhost'"),
    ("bind-ipv6-no-brackets", '[listeners.smtp25]\nbind = ["::1:10025"]\n',
     "listeners.smtp25.bind[0]: '::1:10025': write an IPv6 address in brackets, [address]:port"),
    ("bind-ipv6-no-port", '[listeners.smtp25]\nbind = ["[::1]"]\n',
     "listeners.smtp25.bind[0]: '[::1]': an IPv6 address is written [address]:port"),
    ("bind-brackets-not-ipv6", '[listeners.smtp25]\nbind = ["[1.2.3.4]:25"]\n',
     "listeners.smtp25.bind[0]: '[1.2.3.4]:25': '1.2.3.4' is not an IPv6 address"),
    ("bind-second-entry", '[listeners.smtp25]\nbind = ["0.0.0.0:2525", "::2525"]\n',
     "listeners.smtp25.bind[1]: '::2525': write an IPv6 address in brackets, [address]:port"),
    ("bind-empty", "[listeners.smtp25]\nbind = []\n",
     'listeners.smtp25.bind: must be a non-empty list of "host:port" strings'),
    ("bind-number", "[listeners.smtp25]\nbind = 25\n",
     'listeners.smtp25.bind: must be a non-empty list of "host:port" strings'),
    ("bind-item-number", "[listeners.smtp25]\nbind = [25]\n",
     'listeners.smtp25.bind[0]: must be a "host:port" string, not a number'),
    ("servers-empty", "[backends.mta-smtp]\nservers = []\n",
     'backends.mta-smtp.servers: must be a non-empty list of "host:port" strings'),
    ("server-no-port", '[backends.mta-smtp]\nservers = ["host"]\n',
     "backends.mta-smtp.servers[0]: 'host' has no port: write host:port"),
    ("server-no-host", '[backends.mta-smtp]\nservers = [":587"]\n',
     "backends.mta-smtp.servers[0]: ':587' has no host"),
    ("server-bad-hostname", '[backends.mta-smtp]\nservers = ["bad_host!:587"]\n',
     "backends.mta-smtp.servers[0]: 'bad_host!:587': 'bad_host!' is not a valid host name"),
    ("server-leading-dash", '[backends.mta-smtp]\nservers = ["-mta:587"]\n',
     "backends.mta-smtp.servers[0]: '-mta:587': '-mta' is not a valid host name"),
    ("server-port-0", '[backends.mta-smtp]\nservers = ["mta:0"]\n',
     "backends.mta-smtp.servers[0]: 'mta:0': the port must be a number from 1 to 65535"),
    ("send-proxy-v3", '[backends.mta-smtp]\nsend_proxy = "v3"\n',
     "backends.mta-smtp.send_proxy: must be one of 'v1', 'v2', 'none', not 'v3'"),
    ("backend-not-table", "[backends]\nspare = 5\n",
     "backends.spare: must be a table, not a number"),
    ("mode-udp", '[listeners.smtp25]\nmode = "udp"\n',
     "listeners.smtp25.mode: must be one of 'tcp', 'http', 'socks5', 'forward', not 'udp'"),
    ("accept-proxy-string", '[listeners.smtp25]\naccept_proxy = "yes"\n',
     "listeners.smtp25.accept_proxy: must be true or false, not a string"),
    ("enabled-number", "[listeners.smtp25]\nenabled = 1\n",
     "listeners.smtp25.enabled: must be true or false, not a number"),
    ("tls-string", '[listeners.https]\ntls = "on"\n',
     "listeners.https.tls: must be true or false, not a string"),
    ("on-backend-down", '[listeners.smtp25]\non_backend_down = "reset"\n',
     "listeners.smtp25.on_backend_down: must be one of 'smtp-421', 'close', not 'reset'"),
    ("io-engine-unknown", '[listeners.smtp25]\nio_engine = "io_uring"\n',
     "listeners.smtp25.io_engine: must be one of 'uvloop', 'epoll', not 'io_uring'"),
    ("io-engine-on-http", '[listeners.http]\nio_engine = "epoll"\n',
     "listeners.http.io_engine: applies to tcp, socks5 and forward listeners only"),
    ("tcp-listener-without-backend", '[listeners.extra]\nbind = ["0.0.0.0:2525"]\n',
     "listeners.extra.backend: a tcp listener needs a backend"),
    ("backend-does-not-exist", '[listeners.smtp25]\nbackend = "nope"\n',
     f"listeners.smtp25.backend: no backend named 'nope' ({PRESET_BACKENDS})"),
    ("backend-number", "[listeners.http]\nbackend = 5\n",
     "listeners.http.backend: must be a backend name, not a number"),
    ("same-address-twice", '[listeners.smtp587]\nbind = ["0.0.0.0:10025"]\n',
     "listeners.smtp587.bind[0]: 0.0.0.0:10025 is already bound by listener 'smtp25'"),
    ("same-address-any-shorthand", '[listeners.smtp587]\nbind = [":10025"]\n',
     "listeners.smtp587.bind[0]: 0.0.0.0:10025 is already bound by listener 'smtp25'"),
    ("same-address-ipv6", '[listeners.smtp25]\nbind = ["[::1]:2525"]\n'
     '[listeners.smtp587]\nbind = ["[::1]:2525"]\n',
     "listeners.smtp587.bind[0]: [::1]:2525 is already bound by listener 'smtp25'"),
    ("listeners-not-table", "listeners = 5\n", "listeners: must be a table, not a number"),
    ("listener-not-table", "[listeners]\nsmtp25 = 5\n",
     "listeners.smtp25: must be a table, not a number"),
    ("backend-name", '[backends."bad name"]\nservers = ["mta:25"]\n',
     "backends.bad name: a backend name uses letters, digits, '-', '_' and '.'"),
]


@pytest.mark.parametrize(("text", "expected"), [row[1:] for row in FILE_PROBLEMS],
                         ids=[row[0] for row in FILE_PROBLEMS])
def test_one_problem_in_file(write: Any, text: str, expected: str) -> None:
    path = write(text)
    assert problems_of(path) == [f"{path}: {expected}"]


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ('[listeners.smtp25]\nbind = ["[::1]:10025"]\n',
         lambda c: c.listeners["smtp25"].bind == (Address("::1", 10025),)),
        ('[listeners.smtp25]\nbind = ["[::]:1", "127.0.0.1:65535"]\n',
         lambda c: c.listeners["smtp25"].bind == (Address("::", 1),
                                                   Address("127.0.0.1", 65535))),
        ('[listeners.smtp25]\nbind = ":2525"\n',
         lambda c: c.listeners["smtp25"].bind == (Address("0.0.0.0", 2525),)),
        ('[timeouts]\ndrain = "0s"\n', lambda c: c.timeouts.drain == 0.0),
        ('[timeouts]\nconnect = "1m30s"\ntcp_idle = "1h"\nproxy_header = "500ms"\n',
         lambda c: (c.timeouts.connect, c.timeouts.tcp_idle, c.timeouts.proxy_header)
         == (90.0, 3600.0, 0.5)),
        ('[backends.mta-smtp]\nservers = ["[2001:db8::1]:587", "mta.ga1.svc.cluster.local.:587"]\n',
         lambda c: c.backends["mta-smtp"].servers == (Address("2001:db8::1", 587),
                                                      Address("mta.ga1.svc.cluster.local.", 587))),
        ("workers = 0\n", lambda c: c.workers == 0),
        ("workers = 1024\n", lambda c: c.workers == 1024),
        ('[listeners.http]\nbackend = "mta-http"\n',
         lambda c: c.listeners["http"].backend == "mta-http"),
        ('[listeners.extra]\nbind = ["127.0.0.1:8080"]\nmode = "http"\nroutes = "greenarrow"\n',
         lambda c: c.listeners["extra"].backend is None),
    ],
    ids=["ipv6-loopback", "port-bounds", "any-shorthand", "drain-zero", "duration-units",
         "ipv6-and-fqdn-servers", "workers-0", "workers-1024", "http-with-backend",
         "http-with-routes-only"],
)
def test_valid_edge_cases(write: Any, text: str, check: Any) -> None:
    assert check(config.load(write(text), environ={}))


def test_invalid_toml_is_one_problem_naming_the_file(write: Any) -> None:
    path = write('workers = 2\n[listeners.smtp25\nbind = "x"\n')
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: not valid TOML: ")
    assert "line 2" in problem


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems_of(path) == [f"{path}: cannot read: No such file or directory"]


def test_unreadable_file_is_a_directory(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read: Is a directory"]


def test_missing_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert problems_of(None, environ={"MTA_INGRESS_CONFIG": str(path)}) == [
        f"{path}: cannot read: No such file or directory"]


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("workers", "--set: workers: write key.path=value"),
        ("=3", "--set: =3: write key.path=value"),
    ],
)
def test_set_without_equals(assignment: str, expected: str) -> None:
    assert problems_of(None, assignments=[assignment]) == [expected]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"MTA_INGRESS_WORKERS": "x"}, f"environment: workers: {WORKERS} 'x'"),
        ({"MTA_INGRESS_WORKERS": "-1"}, f"environment: workers: {WORKERS} -1"),
        ({"MTA_INGRESS_WORKERS": "true"}, f"environment: workers: {WORKERS} True"),
        ({"MTA_INGRESS_PRESET": "bogus"},
         "environment: preset: unknown preset 'bogus'; choose one of greenarrow, kumomta, egress, "
         "none"),
        ({"MTA_INGRESS_RELEASE": "no good"},
         "environment: release: must be a name like ga1, not 'no good'"),
        ({"MTA_INGRESS_LOG_FORMAT": "xml"},
         "environment: log_format: must be one of 'logfmt', 'json', not 'xml'"),
        ({"MTA_INGRESS_TIMEOUTS_CONNECT": "0s"},
         "environment: timeouts.connect: must be longer than zero"),
        ({"MTA_INGRESS_TIMEOUTS_GRACE": "5 parsecs"},
         "environment: timeouts.grace: '5 parsecs' is not a duration like 500ms, 5s, 1m or 1h"),
        ({"MTA_INGRESS_SET": "listeners.smtp25.mode=udp"},
         "environment: listeners.smtp25.mode: must be one of 'tcp', 'http', 'socks5', 'forward', "
         "not 'udp'"),
        ({"MTA_INGRESS_SET": "listeners.smtp25.bind=localhost:25"},
         "environment: listeners.smtp25.bind[0]: 'localhost:25': a listener binds an IP "
         "address, not 'localhost'"),
        ({"MTA_INGRESS_SET": "colour=blue"},
         f"environment: colour: unknown key; known keys here: {TOP_KEYS}"),
    ],
    ids=["workers-x", "workers-negative", "workers-bool", "preset", "release", "log-format",
         "timeout-zero", "timeout-unit", "set-mode", "set-bind", "set-unknown"],
)
def test_problem_from_environment(environ: dict[str, str], expected: str) -> None:
    assert problems_of(None, environ=environ) == [expected]


@pytest.mark.parametrize(
    ("overrides", "assignments", "expected"),
    [
        ({"workers": -1}, None, f"flags: workers: {WORKERS} -1"),
        ({"workers": 2000}, None, f"flags: workers: {WORKERS} 2000"),
        ({"preset": "bogus"}, None,
         "flags: preset: unknown preset 'bogus'; choose one of greenarrow, kumomta, egress, none"),
        ({"release": "a b"}, None, "flags: release: must be a name like ga1, not 'a b'"),
        (None, ["workers=x"], f"flags: workers: {WORKERS} 'x'"),
        (None, ["timeouts.grace=forever"],
         "flags: timeouts.grace: 'forever' is not a duration like 500ms, 5s, 1m or 1h"),
        (None, ["listeners.smtp587.backend=nope"],
         f"flags: listeners.smtp587.backend: no backend named 'nope' ({PRESET_BACKENDS})"),
    ],
    ids=["workers-negative", "workers-too-many", "preset", "release", "set-workers",
         "set-timeout", "set-backend"],
)
def test_problem_from_flags(
    overrides: dict[str, Any] | None, assignments: list[str] | None, expected: str,
) -> None:
    assert problems_of(None, overrides=overrides, assignments=assignments) == [expected]


def test_problem_is_blamed_on_the_layer_that_set_the_value(write: Any) -> None:
    path = write("workers = 2\n")
    assert problems_of(path, environ={"MTA_INGRESS_WORKERS": "-3"}) == [
        f"environment: workers: {WORKERS} -3"]
    path = write("workers = -3\n")
    assert problems_of(path, environ={"MTA_INGRESS_RELEASE": "prod"}) == [
        f"{path}: workers: {WORKERS} -3"]


def test_clash_created_by_the_file_is_reported(write: Any) -> None:
    """The file moves smtp25 onto the preset's smtp587 port.  (Which source the line names is
    questionable today: "preset greenarrow", although the file made the clash.)"""
    path = write('[listeners.smtp25]\nbind = ["0.0.0.0:10587"]\n')
    (problem,) = problems_of(path)
    assert problem.endswith(
        ": listeners.smtp587.bind[0]: 0.0.0.0:10587 is already bound by listener 'smtp25'")


def test_every_problem_in_one_file_is_reported(write: Any) -> None:
    path = write(
        'colour = "blue"\n'
        "workers = -1\n"
        "[timeouts]\n"
        'connect = "5 parsecs"\n'
        '[listeners.smtp25]\n'
        'bind = ["localhost:25"]\n'
        'mode = "udp"\n'
        "[listeners.smtp587]\n"
        'backend = "nope"\n'
        "[backends.mta-smtp]\n"
        'send_proxy = "v3"\n'
        "servers = []\n"
    )
    problems = problems_of(path)
    assert len(problems) == 8
    assert {problem.split(": ")[1] for problem in problems} == {
        "colour", "workers", "timeouts.connect", "listeners.smtp25.bind[0]",
        "listeners.smtp25.mode", "listeners.smtp587.backend", "backends.mta-smtp.servers",
        "backends.mta-smtp.send_proxy"}
    assert all(problem.startswith(f"{path}: ") for problem in problems)
    assert all("\n" not in problem for problem in problems)


def test_problems_of_every_layer_are_reported_together(write: Any) -> None:
    path = write("workers = -1\n")
    problems = problems_of(
        path,
        environ={"MTA_INGRESS_TIMEOUTS_GRACE": "never"},
        overrides={"release": "a b"},
        assignments=["listeners.smtp25.mode=udp", "oops"],
    )
    assert sorted(problems) == sorted([
        "--set: oops: write key.path=value",
        "flags: release: must be a name like ga1, not 'a b'",
        f"{path}: workers: {WORKERS} -1",
        "environment: timeouts.grace: 'never' is not a duration like 500ms, 5s, 1m or 1h",
        "flags: listeners.smtp25.mode: must be one of 'tcp', 'http', 'socks5', 'forward', "
        "not 'udp'",
    ])


def test_all_listeners_disabled_is_a_problem(write: Any) -> None:
    path = write("".join(f"[listeners.{name}]\nenabled = false\n" for name in PRESET_LISTENERS))
    (problem,) = problems_of(path)
    assert problem.endswith(": listeners: no listener is enabled: there would be nothing to serve")


# --- regressions: bugs found while writing these tests, now fixed ------------------------------


@pytest.mark.parametrize("value", ['["greenarrow"]', "{ name = \"greenarrow\" }"])
def test_preset_of_wrong_type_is_a_problem(write: Any, value: str) -> None:
    path = write(f"preset = {value}\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}: preset: ")


@pytest.mark.parametrize("release", ["123", "0x1f"])
def test_numeric_release_from_environment(release: str) -> None:
    effective = config.load(None, environ={"MTA_INGRESS_RELEASE": release})
    assert effective.release == release
    assert str(effective.backends["mta-smtp"].servers[0]) == f"{release}-ingress-mta:587"


def test_numeric_release_from_flag_is_accepted() -> None:
    effective = config.load(None, environ={}, overrides={"release": "123"})
    assert str(effective.backends["mta-smtp"].servers[0]) == "123-ingress-mta:587"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[listeners.http]\nmode = "udp"\n',
         "listeners.http.mode: must be one of 'tcp', 'http', 'socks5', 'forward', not 'udp'"),
        ("[listeners.smtp25]\nbackend = 5\n",
         "listeners.smtp25.backend: must be a backend name, not a number"),
    ],
    ids=["http-mode-udp", "tcp-backend-number"],
)
def test_one_bad_value_is_one_problem(write: Any, text: str, expected: str) -> None:
    path = write(text)
    assert problems_of(path) == [f"{path}: {expected}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[listeners.smtp25]\nmode = "udp"\nbackend = "nope"\n',
         ["listeners.smtp25.mode: must be one of 'tcp', 'http', 'socks5', 'forward', not 'udp'",
          f"listeners.smtp25.backend: no backend named 'nope' ({PRESET_BACKENDS})"]),
        ('[listeners.http]\nmode = "udp"\nroutes = "nope"\n',
         ["listeners.http.mode: must be one of 'tcp', 'http', 'socks5', 'forward', not 'udp'",
          "listeners.http.routes: no route table named 'nope' (greenarrow)"]),
        ('[listeners.smtp25]\nbind = ["localhost:25"]\nbackend = "nope"\n',
         ["listeners.smtp25.bind[0]: 'localhost:25': a listener binds an IP address, not "
          "'localhost'",
          f"listeners.smtp25.backend: no backend named 'nope' ({PRESET_BACKENDS})"]),
        ('[listeners.smtp25]\nbackend = "nope"\ntls = true\n',
         [f"listeners.smtp25.backend: no backend named 'nope' ({PRESET_BACKENDS})",
          "listeners.smtp25.tls: TLS is terminated on http listeners only; a tcp listener "
          "relays TLS (STARTTLS) end to end"]),
    ],
    ids=["bad-mode", "bad-mode-routes", "bad-bind", "tcp-tls"],
)
def test_an_unknown_backend_or_route_table_is_listed_with_the_other_problems(
        write: Any, text: str, expected: list[str]) -> None:
    path = write(text)
    assert problems_of(path) == [f"{path}: {problem}" for problem in expected]


def test_same_ipv6_address_spelled_differently_is_a_clash(write: Any) -> None:
    path = write('[listeners.smtp25]\nbind = ["[::1]:2525"]\n'
                 '[listeners.smtp587]\nbind = ["[0:0::1]:2525"]\n')
    problems = problems_of(path)
    assert len(problems) == 1
    assert "already bound by listener 'smtp25'" in problems[0]


@pytest.mark.parametrize("port", ["\uff12\uff15", "\u00b2"], ids=["fullwidth-25", "superscript-2"])
def test_non_ascii_digit_port_is_rejected(write: Any, port: str) -> None:
    path = write(f'[listeners.smtp25]\nbind = ["0.0.0.0:{port}"]\n')
    assert problems_of(path) == [
        f"{path}: listeners.smtp25.bind[0]: '0.0.0.0:{port}': the port must be a number from 1 "
        "to 65535"]


def test_max_body_on_a_listener(write: Any) -> None:
    effective = config.load(write('[listeners.http]\nmax_body = "10MiB"\n'), environ={})
    assert effective.listeners["http"].max_body == 10 * 1024**2
    with pytest.raises(ConfigError) as caught:
        config.load(write('[listeners.http]\nmax_body = -5\n', "bad.toml"), environ={})
    assert "listeners.http.max_body: must be a positive byte count" in caught.value.problems[0]


def test_tls_section_defaults_and_values(write: Any) -> None:
    defaults = config.load(write(""), environ={})
    assert defaults.tls.cert_dir == "/mnt/tls/haproxy"  # where the KRA chart mounts it
    assert defaults.tls.poll_interval == 5.0
    assert defaults.tls.default_cert is None
    configured = config.load(environ={}, path=write(
        '[tls]\ncert_dir = "/certs"\ndefault_cert = "main.pem"\npoll_interval = "500ms"\n'
        'self_signed_names = ["mail.example.org"]\nhandshake_timeout = "3s"\n'))
    assert configured.tls.cert_dir == "/certs"
    assert configured.tls.default_cert == "main.pem"
    assert configured.tls.poll_interval == 0.5
    assert configured.tls.self_signed_names == ("mail.example.org",)
    assert configured.tls.handshake_timeout == 3.0


@pytest.mark.parametrize(("text", "release"), [
    ("", "ga1"), ('release = "prod"\n', "prod"),
    # what print-config printed before the default was resolved: still the default
    ('release = "prod"\n[tls]\nself_signed_names = []\n', "prod")])
def test_self_signed_names_default_is_the_documented_one(write: Any, text: str,
                                                         release: str) -> None:
    effective = config.load(write(text), environ={})
    assert effective.tls.self_signed_names == (f"{release}-ingress", "localhost")
    assert f'self_signed_names = ["{release}-ingress", "localhost"]' in config.to_toml(effective)


def test_acme_section_defaults_aliases_and_values(write: Any) -> None:
    defaults = config.load(write(""), environ={}).tls.acme
    assert not defaults.enabled
    assert defaults.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert (defaults.retry_initial, defaults.retry_max) == (60.0, 6 * 3600.0)
    staging = config.load(write('[tls.acme]\ndirectory = "staging"\n'), environ={}).tls.acme
    assert staging.directory == "https://acme-staging-v02.api.letsencrypt.org/directory"
    configured = config.load(environ={}, path=write(
        '[tls.acme]\nenabled = true\ndirectory = "https://ca.internal/dir"\n'
        'email = "ops@mail.test"\ndomains = ["Track.Mail.Test.", "send.mail.test"]\n'
        'ca_bundle = "/etc/ca.pem"\nexpected_addresses = ["2001:db8::0:1", "192.0.2.7"]\n'
        'key_type = "rsa"\nretry_initial = "30s"\nretry_max = "1h"\n')).tls.acme
    assert configured.enabled
    assert configured.domains == ("track.mail.test", "send.mail.test")
    assert configured.expected_addresses == ("2001:db8::1", "192.0.2.7")
    assert (configured.email, configured.ca_bundle) == ("ops@mail.test", "/etc/ca.pem")
    assert (configured.key_type, configured.retry_initial, configured.retry_max) == (
        "rsa", 30.0, 3600.0)
