"""Command line: ``mta-ingress run | check-config | print-config | certs status | demo |
hash-password``."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ingress import __version__, config
from ingress.ops.logs import configure_logging

log = logging.getLogger("mta_ingress")

# tls/status.py's EXIT_* values, written out: importing it (cryptography, acme) for every
# command's --help would slow them all.
CERTS_STATUS_EXIT_CODES = (
    "Exit status: 0 every certificate file is served; 1 the configuration is invalid; "
    "3 some file is refused (NOT SERVED) and the others are served; 4 no certificate is usable "
    "(the directory does not exist, holds no certificate files, or every file is refused), so "
    "HTTPS serves the self-signed fallback.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta-ingress",
        description="Ingress for Kubernetes mail clusters (SMTP with PROXY protocol, HTTP, HTTPS).",
    )
    parser.add_argument("--version", action="version", version=f"mta-ingress {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config_options(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", metavar="FILE",
                         help="TOML configuration file (default: $MTA_INGRESS_CONFIG, or none)")
        sub.add_argument("--preset", help="greenarrow (default), kumomta, egress or none")
        sub.add_argument("--release", help="Helm release name used by the greenarrow preset")
        sub.add_argument("--workers", type=int, help="worker processes; 0 = one per usable CPU")
        sub.add_argument("--set", dest="assignments", action="append", default=[],
                         metavar="KEY=VALUE",
                         help="set any key, e.g. --set "
                              "'listeners.smtp587.bind=[\"127.0.0.1:2587\"]' (repeatable)")
        return sub

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_config_options(commands.add_parser(name, help=help_text,
                                                      description=help_text))

    with_config("run", "Run the ingress.")
    check = with_config("check-config",
                        "Validate the configuration; exit 1 listing every problem.")
    check.add_argument("--strict", action="store_true",
                       help="also fail on warnings: an egress source that is not an address of "
                            "this host")
    with_config("print-config", "Print the effective configuration as TOML.")
    certs = commands.add_parser("certs", help="Inspect the certificate directory.",
                                description="Inspect the certificate directory.")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    add_config_options(certs_commands.add_parser(
        "status", help="Each certificate file: names, issuer, expiry and next renewal.",
        description="Each certificate file of tls.cert_dir: names, issuer, expiry and, for the "
                    "one the ingress obtains over ACME, its next renewal.",
        epilog=CERTS_STATUS_EXIT_CODES))
    demo = commands.add_parser("demo", help="Run the single-node demo on loopback.",
                               description="Run the single-node demo on loopback.")
    demo.add_argument("--base-port", type=int, default=20000,
                      help="first port of the block the demo uses (default 20000)")
    hash_password = commands.add_parser(
        "hash-password", help="Print a password's scrypt hash for a SOCKS5 listener's users_file.",
        description="Read a password from the terminal (asked twice) or the first line of stdin "
                    "and print its scrypt hash, or NAME:hash with --user: the line that goes "
                    "into the egress SOCKS5 listener's users_file, which never accepts a "
                    "plain-text password.")
    hash_password.add_argument("--user", metavar="NAME",
                               help="print NAME:hash, the whole line of the users_file")
    return parser


def _hash_password(user: str | None) -> int:
    """``hash-password``: 0 and the line on stdout, or 2 and the reason on stderr."""
    from ingress.config import users

    if user is not None and (problem := users.user_name_problem(user)) is not None:
        print(f"hash-password: --user: {problem}", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        try:
            typed = getpass.getpass("Password: ")
            again = getpass.getpass("Password again: ")
        except EOFError:
            typed = again = ""
        if typed != again:
            print("hash-password: the two passwords differ", file=sys.stderr)
            return 2
        password = typed.encode("utf-8")
    else:
        # The bytes as they come, as RFC 1929 carries them; only the line's end is not the
        # password's.
        password = sys.stdin.buffer.readline().removesuffix(b"\n").removesuffix(b"\r")
    if not password:
        print("hash-password: the password is empty", file=sys.stderr)
        return 2
    if len(password) > users.MAX_PASSWORD_BYTES:
        print(f"hash-password: the password has {len(password)} bytes; RFC 1929 carries at most "
              f"{users.MAX_PASSWORD_BYTES}", file=sys.stderr)
        return 2
    hashed = users.hash_password(password)
    print(hashed if user is None else f"{user}:{hashed}")
    return 0


def _load(args: argparse.Namespace) -> config.Config:
    overrides: dict[str, Any] = {"preset": args.preset, "release": args.release,
                                 "workers": args.workers}
    return config.load(args.config, overrides=overrides, assignments=args.assignments)


def _check_config(effective: config.Config, *, strict: bool, source: str | None) -> int:
    """What cannot be wrong in any file but is wrong on this host: warnings, or with --strict
    problems (a DaemonSet's init container can refuse to start on a node without the
    addresses)."""
    from ingress.proxy.egress import source_warnings

    warnings = source_warnings(effective.enabled_listeners)
    for warning in warnings:
        # As a configuration problem is written: the file, the key, what is wrong.
        print(f"{'error' if strict else 'warning'}: {source or 'configuration'}: {warning}",
              file=sys.stderr)
    if strict and warnings:
        return 1
    print("configuration ok")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    if args.command == "demo":
        from ingress.demo import single_node as demo

        return demo.main(base_port=args.base_port)
    if args.command == "hash-password":
        return _hash_password(args.user)
    try:
        effective = _load(args)
    except config.ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.command == "check-config":
        return _check_config(effective, strict=args.strict,
                             source=args.config or os.environ.get("MTA_INGRESS_CONFIG"))
    if args.command == "print-config":
        sys.stdout.write(config.to_toml(effective))
        return 0
    if args.command == "certs":
        from tls import status

        result = status.report(effective.tls)
        sys.stdout.write(result.text)
        return result.exit_code
    from ingress.process import server

    return server.serve(effective)
