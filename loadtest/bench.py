"""Side-by-side benchmark of mta-ingress and HAProxy on loopback (``make bench``).

Both proxies are configured like the GreenArrow KRA chart's HAProxy for SMTP and put in front of
the same backend process; each scenario runs alternately on HAProxy and on mta-ingress, a fresh
proxy process per measurement.  The proxy under test has a CPU to itself; the load generator
(this process) and the backend share the other one.  CPU time of every party is read from /proc
over the measurement window, so that the output says who was the bottleneck.

The egress scenarios (``--scenarios egress-sessions,egress-bulk,egress-idle``,
loadtest/bench_egress.py) put mta-ingress's egress listeners beside Dante and HAProxy in forward
mode instead.

See docs/benchmarks.md for what each scenario measures and how to read the output.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python loadtest/bench.py` puts loadtest/, not the repository, first on sys.path.
    sys.path.insert(0, str(ROOT))

from loadtest import bench_egress  # noqa: E402
from loadtest.bench_report import summarise, summary_text  # noqa: E402
from loadtest.bench_runner import (  # noqa: E402
    RESULTS,
    PortPool,
    environment,
    execute,
    fit_idle_connections,
    machine_busy,
    raise_nofile,
)
from loadtest.bench_scenarios import (  # noqa: E402
    DISTURBED,
    EGRESS_SCENARIOS,
    HTTP_SCENARIOS,
    SCENARIOS,
    Measurement,
    plan,
)
from loadtest.bench_targets import (  # noqa: E402
    BENCH_VENV,
    HAPROXY,
    JEMALLOC,
    haproxy_maxconn,
    jemalloc_available,
    stop_all_children,
)

# How the summary names the --access-log and --haproxy-log choices.
LOG_NAMES = {"file": "file", "devnull": "/dev/null", "off": "off",
             "errors": "errors only (dontlog-normal)"}


def parse_burns(text: str) -> list[float]:
    try:
        burns = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if (not all(math.isfinite(burn) and burn >= 0 for burn in burns)
            or len(set(burns)) != len(burns)):
        raise argparse.ArgumentTypeError(f"distinct finite values >= 0 wanted: {text!r}")
    return burns


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not levels or any(level < 1 for level in levels) or len(set(levels)) != len(levels):
        raise argparse.ArgumentTypeError(f"distinct integers >= 1 wanted: {text!r}")
    return levels


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Side-by-side benchmark of mta-ingress and HAProxy on loopback.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: " + ", ".join(SCENARIOS) + "; and, not "
                             "in the default run: " + ", ".join(EGRESS_SCENARIOS))
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements per proxy, alternating haproxy / mta-ingress")
    parser.add_argument("--duration", type=float, default=8.0,
                        help="seconds of each measurement window (sessions, bulk)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of load before each window")
    parser.add_argument("--workers", type=int, default=1,
                        help="mta-ingress workers; above 1 the proxies are not pinned, and "
                             "sessions also runs the pinned 1-worker comparison")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="sessions: SMTP sessions in flight")
    parser.add_argument("--bulk-connections", type=int, default=2,
                        help="bulk: connections streaming at once")
    parser.add_argument("--bulk-chunk", type=int, default=1 << 20,
                        help="bulk: bytes per send call")
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--idle-batch", type=int, default=500,
                        help="idle: connections opened at once (below the accept backlogs)")
    parser.add_argument("--idle-hold", type=float, default=3.0,
                        help="idle: seconds the connections are held open")
    parser.add_argument("--http-duration", type=float, default=3.0,
                        help="seconds of each measurement window of the http-* scenarios")
    parser.add_argument("--http-connections", type=int, default=64,
                        help="http-keepalive, http-close, http-latency: connections")
    parser.add_argument("--handshake-clients", type=int, default=16,
                        help="tls-handshake-* and tls-request-*: openssl s_time -new "
                             "processes at once")
    parser.add_argument("--origin", choices=("stub", "nginx"), default="stub",
                        help="the HTTP scenarios' origin: backend.py's stub, or nginx (Debian "
                             "nginx-light, one worker: loadtest/nginx_origin.py)")
    parser.add_argument("--http-1mib-connections", type=int, default=8,
                        help="http-1mib: connections")
    parser.add_argument("--http-rate", type=float, default=None,
                        help="http-latency: requests/s (default: half of HAProxy's median "
                             "http-keepalive rate, measured first if that scenario is not run)")
    parser.add_argument("--access-log", choices=("file", "devnull", "errors"), default="file",
                        help="where mta-ingress's access log (its stdout) goes; errors: to the "
                             "file, with log_normal = false (HAProxy's dontlog-normal)")
    parser.add_argument("--profile", choices=("off", "python", "native"), default="off",
                        help="sessions: one extra, uncounted mta-ingress run sampled by py-spy "
                             "(python: --nonblocking; native: C frames and system calls too)")
    parser.add_argument("--allocator", choices=("glibc", "jemalloc", "both"), default="glibc",
                        help="the ingress's C allocator: glibc's malloc (as the image runs "
                             "it), or jemalloc (Debian's libjemalloc2) preloaded; both: glibc's "
                             "compared, jemalloc's measured beside it as mta-ingress+jemalloc")
    parser.add_argument("--io-engine", choices=("uvloop", "epoll", "both"), default="epoll",
                        help="the SMTP scenarios' tcp listener's and the egress scenarios' "
                             "listeners' io_engine (docs/configuration.md; epoll is the "
                             "default there too); both: epoll's compared, uvloop's measured "
                             "beside it as mta-ingress+uvloop (egress: ingress-forward+uvloop "
                             "and the like)")
    parser.add_argument("--haproxy-log", choices=("off", "file", "errors"), default="off",
                        help="HAProxy's log: off, or one line per request or session to a file "
                             "in the results directory, as the contract's HAProxy logs to "
                             "stdout; errors: the same with option dontlog-normal")
    parser.add_argument("--floor", type=parse_burns, default=[], metavar="US[,US...]",
                        help="http-keepalive, https-keepalive, sessions, tls-handshake-* "
                             "(one worker) and egress-sessions (forward mode): also "
                             "measure the reference relay loadtest/floor.py, once per value, "
                             "with that many microseconds of busy CPU added per request or "
                             "session (0: none)")
    parser.add_argument("--egress-concurrency", type=parse_levels, default=[16, 128],
                        metavar="N[,N...]",
                        help="egress-sessions: clients in flight, one run per level")
    parser.add_argument("--egress-bulk-sessions", type=int, default=8,
                        help="egress-bulk: sessions streaming messages at once")
    parser.add_argument("--egress-message-mib", type=int, default=32,
                        help="egress-bulk: MiB per message (DATA, then 250)")
    parser.add_argument("--egress-retries", type=int, default=2,
                        help="egress-sessions, egress-bulk: a measurement during which other "
                             "programs used the CPUs (DISTURBED) is taken again, at most this "
                             "many times (the discarded ones are kept in the JSON file)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds the whole run may take: past them, no new measurement "
                             "starts and the run stops (SIGALRM a minute later at most)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin any process to a CPU")
    parser.add_argument("--base-port", type=int, default=24000,
                        help="first loopback port to use (below the ephemeral range)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="where to write every figure (default "
                             "loadtest/results/bench-<timestamp>.json)")
    options = parser.parse_args(argv)
    options.scenarios = [s.strip() for s in options.scenarios.split(",") if s.strip()]
    known = (*SCENARIOS, *EGRESS_SCENARIOS)
    unknown = [s for s in options.scenarios if s not in known]
    if unknown or not options.scenarios:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(known)}")
    if options.rounds < 1 or options.duration <= 0 or options.workers < 1:
        parser.error("--rounds and --workers must be at least 1, --duration positive")
    if (options.egress_bulk_sessions < 1 or options.egress_message_mib < 1
            or options.egress_retries < 0 or options.timeout <= 0):
        parser.error("--egress-bulk-sessions and --egress-message-mib must be at least 1, "
                     "--egress-retries at least 0, --timeout positive")
    return options


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Treated as Ctrl-C.  Inside a measurement asyncio.Runner has replaced the SIGINT handler
    # with one that cancels the load (an exception raised here would land in some transport
    # callback instead); outside, the default handler raises KeyboardInterrupt.
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for binary in (HAPROXY, "taskset"):
        if shutil.which(binary) is None:
            print(f"bench: {binary} not found", file=sys.stderr)
            return 2
    if options.allocator != "glibc" and not jemalloc_available():
        print(f"bench: --allocator {options.allocator}: {JEMALLOC} not found "
              "(Debian package libjemalloc2)", file=sys.stderr)
        return 2
    if any(s in EGRESS_SCENARIOS for s in options.scenarios):
        missing = bench_egress.check_binaries()
        if missing:
            print(f"bench: {missing}", file=sys.stderr)
            return 2
    # The whole run's bound: no measurement starts past the deadline, and SIGALRM (handled as
    # SIGTERM: every process stopped, what was measured kept) ends one that overstays.
    options.deadline = time.monotonic() + options.timeout
    signal.signal(signal.SIGALRM, _on_sigterm)
    signal.setitimer(signal.ITIMER_REAL, options.timeout + 60)
    # Also when started in the background, where SIGINT is inherited as ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / f"bench-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path: Path = options.json or RESULTS / f"bench-{stamp}.json"
    nofile = raise_nofile()
    options.idle_note = fit_idle_connections(options)
    env = environment(nofile)
    command = " ".join([sys.executable, "loadtest/bench.py", *(argv or sys.argv[1:])])
    egress = any(s in EGRESS_SCENARIOS for s in options.scenarios)
    if egress:
        env["dante"] = bench_egress.dante_version()
    print(f"mta-ingress vs HAProxy{' and Dante' if egress else ''}, loopback only; "
          f"{env['cpus']} CPUs ({env['cpu']}), kernel {env['kernel']}")
    print(f"command: {command}")
    print(f"python {env['python']}, uvloop {env['uvloop']}, mta-ingress {env['mta_ingress']} "
          f"({env['commit']}); {env['haproxy']}" + (f"; {env['dante']}" if egress else ""))
    print(f"RLIMIT_NOFILE {nofile}")
    maxconn_note = haproxy_maxconn()[1]
    if maxconn_note:
        print(f"note: haproxy maxconn {haproxy_maxconn()[0]}: {maxconn_note}")
    if options.idle_note:
        print(f"note: idle uses {options.idle_connections:,} connections: {options.idle_note}")
    print(f"configs, logs and access logs: {run_dir}")
    if not sys.executable.startswith(str(BENCH_VENV)):
        print(f"warning: not running on {BENCH_VENV}/bin/python; figures are not comparable "
              "with `make bench`")

    busy = machine_busy()
    if busy >= DISTURBED:
        print(f"warning: before the start, {busy * 100:.0f}% of the CPUs were busy with other "
              "programs; expect DISTURBED measurements")
    runs = plan(options)
    ports = PortPool(options.base_port)
    report: dict[str, Any] = {"command": command, "started": stamp, "environment": env,
                              "busy_before_start": busy,
                              "options": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(options).items()},
                              "runs": {}}
    interrupted = False
    failure = ""
    try:
        for index, run in enumerate(runs):
            results: list[Measurement] = []
            egress = run.scenario in EGRESS_SCENARIOS
            if time.monotonic() > options.deadline:
                raise RuntimeError(f"the run's time limit ({options.timeout:g}s) is up")
            try:
                measurements, info = (bench_egress.execute if egress else execute)(
                    run, options, ports, run_dir, results.append)
            finally:
                report["runs"][run.key] = {"rounds": [asdict(m) for m in results]}
            if egress:
                if not any(r.scenario in EGRESS_SCENARIOS for r in runs[:index]):
                    # The first egress scenario shows the three configurations.
                    for name, path in info["configs"].items():
                        print(f"\n   {name} config ({path}):")
                        print(_indent(Path(path).read_text()))
                summary = bench_egress.summarise(run, measurements)
                report["runs"][run.key].update({
                    "scenario": run.scenario, "workers": run.workers,
                    "concurrency": run.concurrency, "layout": run.layout.describe(), **info,
                    "summary": summary,
                    "summary_text": bench_egress.summary_text(run, summary, options)})
                continue
            http = run.scenario in HTTP_SCENARIOS
            first = not any(r.scenario not in EGRESS_SCENARIOS for r in runs[:index])
            if first or (http and not any(r.scenario in HTTP_SCENARIOS
                                          for r in runs[:index])):
                # The first SMTP and the first HTTP scenario show their configurations.
                print("\n   haproxy config (" + info["configs"]["haproxy"] + "):")
                print(_indent(Path(info["configs"]["haproxy"]).read_text()))
                print("   mta-ingress config (" + info["configs"]["mta-ingress"] + "):")
                print(_indent(Path(info["configs"]["mta-ingress"]).read_text()))
                print(f"   (other {'HTTP' if http else 'SMTP'} scenarios differ only in ports)")
            summary = summarise(run, measurements)
            if (run.scenario == "http-keepalive" and run.workers == 1
                    and options.http_rate is None):
                peak = summary["medians"]["haproxy"]["value"]
                if peak and not summary["medians"]["haproxy"]["errors"]:
                    options.http_rate = peak / 2
            report["runs"][run.key].update({"scenario": run.scenario, "workers": run.workers,
                                            "layout": run.layout.describe(), **info,
                                            "summary": summary,
                                            "summary_text": summary_text(run, summary,
                                                                         options)})
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping every process", file=sys.stderr)
    except (RuntimeError, OSError) as error:
        # A proxy or the backend that does not start: say so plainly and keep what was measured.
        failure = str(error)
        report["error"] = failure
        print(f"\nbench: stopped: {failure}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        stop_all_children()
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print("\n" + "=" * 100)
    print(f"SUMMARY ({options.rounds} rounds per proxy, medians; CPU 100% = one core; "
          f"mta-ingress access log: {LOG_NAMES[options.access_log]}; "
          f"HAProxy log: {LOG_NAMES[options.haproxy_log]}; mta-ingress allocator: "
          f"{options.allocator})")
    for key, data in report["runs"].items():
        for line in data.get("summary_text", [f"{key}: incomplete"]):
            print(line)
        if "summary" in data.get("profile", {}):
            print(f"  where mta-ingress spends its time ({options.profile} profile):")
            for line in data["profile"]["summary"]:
                print("  " + line)
    print(f"\nall figures: {json_path}")
    if failure:
        print(f"bench: stopped early: {failure.splitlines()[0]}")
    return 130 if interrupted else 1 if failure else 0


def _indent(text: str) -> str:
    return "\n".join("     " + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())

