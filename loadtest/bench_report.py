"""The benchmark's report: a line per round, the medians and ratios of each scenario, its verdict
against the target and what limited each proxy."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from loadtest.bench_scenarios import (
    COMPARED,
    DISTURBED,
    HTTP_SCENARIOS,
    LATENCY_MAX_RATIO,
    S_TIME_SCENARIOS,
    SATURATED,
    TARGETS,
    Layout,
    Measurement,
    Run,
    cost_unit,
    describe_scenario,
)

UNITS = {"sessions": ("sessions/s", "sessions per proxy-CPU-s"),
         "bulk": ("MB/s", "MB per proxy-CPU-s"),
         "http-keepalive": ("requests/s", "requests per proxy-CPU-s"),
         "http-close": ("requests/s", "requests per proxy-CPU-s"),
         "http-1mib": ("MB/s", "MB per proxy-CPU-s"),
         "https-handshake-ecdsa": ("handshakes/s", "handshakes per proxy-CPU-s"),
         "https-handshake-rsa": ("handshakes/s", "handshakes per proxy-CPU-s"),
         "https-keepalive": ("requests/s", "requests per proxy-CPU-s"),
         **dict.fromkeys(S_TIME_SCENARIOS, ("handshakes/s", "handshakes per proxy-CPU-s")),
         "http-latency": ("ms p99", ""),
         "idle": ("KiB RSS per connection", "")}


# "local": a request the proxy answered itself (the readiness path of tls-request-*)
NORMAL_ENDS = {"closed", "client-closed", "server-closed", "ok", "local"}
# A client that left: in the middle of a response, or of a TLS handshake.
CLIENT_LEFT_ENDS = ("client-aborted", "rejected:tls-handshake-aborted")


def abnormal_ends(m: Measurement) -> dict[str, int]:
    """Ends other than the normal ones.  wrk closes its connections when its run ends, in the
    middle of the responses or handshakes in flight: up to one such end per connection and wrk
    run (warm-up and measured) is the load's doing, not the proxy's."""
    allowed = int(m.detail.get("expected_client_aborts", 0))
    odd = {k: v for k, v in m.ingress_ends.items() if k not in NORMAL_ENDS}
    if 0 < sum(odd.get(end, 0) for end in CLIENT_LEFT_ENDS) <= allowed:
        for end in CLIENT_LEFT_ENDS:
            odd.pop(end, None)
    return odd


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def number(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def round_tail(m: Measurement) -> str:
    """The end of a round's line: its errors, the proxy's exit status and alarming stderr lines
    when there are any, and the access log's session ends."""
    errors = ", ".join(f"{k}={v}" for k, v in sorted(m.errors.items())) or "none"
    ends = ("" if not m.ingress_ends else
            "  ends: " + ", ".join(f"{k}={v}" for k, v in sorted(m.ingress_ends.items()))
            + ("  <-- abnormal" if abnormal_ends(m) else ""))
    exit_note = "" if m.exit_code in (0, None) else f"  exit={m.exit_code}"
    if m.stderr_alarms:
        exit_note += f"  stderr: {len(m.stderr_alarms)} alarming line(s), first: " \
                     f"{m.stderr_alarms[0][:160]}"
    return f"errors: {errors}{exit_note}{ends}"


def latency_text(m: Measurement) -> str:
    """A round's latency, if it has one: for its line."""
    lat = m.detail.get("latency_ms")
    return f"  latency p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms" if lat else ""


def round_line(run: Run, m: Measurement) -> str:
    tail = round_tail(m)
    if run.scenario == "idle":
        d = m.detail
        return (f"  round {m.round} {m.proxy:<11}  established {d['established']:,}/"
                f"{d['target']:,}  failed {d['failed']}  lost {d['lost_while_holding']}  "
                f"backend sessions {d['backend_sessions_opened']:,}  RSS "
                f"{d['rss_before_kib'] / 1024:,.1f} -> {d['rss_holding_kib'] / 1024:,.1f} MiB "
                f"(PSS {d['pss_before_kib'] / 1024:,.1f} -> {d['pss_holding_kib'] / 1024:,.1f})"
                f"  = {number(m.value, 2)} KiB/conn  (opened in {d['open_s']:.1f}s)  "
                f"{tail}")
    unit = UNITS[run.scenario][0]
    if run.scenario == "http-latency":
        d = m.detail
        lat = d["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        return (f"  round {m.round} {m.proxy:<11} p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms"
                f"  at {number(d['rate_achieved'])}/{number(d['rate_asked'])} requests/s "
                f"(achieved/asked)  max queued {d['max_queue']}  CPU {cpu_text(m.cpu)}  "
                f"{tail}")
    return (f"  round {m.round} {m.proxy:<11} {number(m.value):>9} {unit}  "
            f"CPU {cpu_text(m.cpu)}  "
            f"per proxy-CPU-s {number(m.per_cpu)}"
            f"{latency_text(m)}  {tail}")


def cpu_text(cpu: dict[str, Any]) -> str:
    text = (f"proxy {percent(cpu.get('proxy'))} (sys {percent(cpu.get('proxy_sys'))}"
            + (f", core {percent(cpu['proxy_core'])}" if cpu.get("proxy_core") is not None else "")
            + f") loadgen {percent(cpu.get('loadgen'))} backend {percent(cpu.get('backend'))}")
    if cpu.get("load_core") is not None:
        text += f" (core {percent(cpu['load_core'])})"
    if cpu.get("machine") is not None:
        text += f" (all CPUs {percent(cpu['machine'])})"
    if (cpu.get("other") or 0.0) >= DISTURBED:
        text += (f"  DISTURBED: {percent(cpu['other'])} of a CPU busy outside the bench's "
                 "processes")
    return text


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values present (None and NaN left out), or None."""
    present = [value for value in values if value is not None and value == value]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def health(mine: Sequence[Measurement]) -> dict[str, int]:
    """What went wrong in a proxy's rounds, by kind: what ``clean`` and ``trouble`` read."""
    return {
        "errors": sum(sum(m.errors.values()) for m in mine),
        "abnormal_ends": sum(sum(abnormal_ends(m).values()) for m in mine),
        "stderr_alarms": sum(len(m.stderr_alarms) for m in mine),
        "disturbed_rounds": sum((m.cpu.get("other") or 0.0) >= DISTURBED for m in mine),
        "bad_exits": sum(m.exit_code not in (0, None) for m in mine),
    }


def summarise(run: Run, measurements: list[Measurement]) -> dict[str, Any]:
    per_proxy: dict[str, dict[str, Any]] = {}
    # haproxy and mta-ingress, then the references (--floor, --allocator both), if measured
    for proxy in dict.fromkeys([*COMPARED, *(m.proxy for m in measurements)]):
        mine = [m for m in measurements if m.proxy == proxy]
        per_proxy[proxy] = {
            "value": median([m.value for m in mine]),
            "per_cpu": median([m.per_cpu for m in mine]),
            "cpu": {part: median([m.cpu.get(part) for m in mine])
                    for part in ("proxy", "proxy_sys", "proxy_core", "loadgen", "backend",
                                 "load_core", "machine")},
            **health(mine),
            "rounds": len(mine),
        }
        unit = cost_unit(run.scenario)
        if unit is not None:
            for key in (f"proxy_us_per_{unit}", f"proxy_sys_us_per_{unit}"):
                per_proxy[proxy][key] = median([m.detail.get(key) for m in mine])
        if run.scenario in HTTP_SCENARIOS:
            for cut in ("p50", "p99"):
                per_proxy[proxy][f"latency_{cut}_ms"] = median(
                    [m.detail.get("latency_ms", {}).get(cut) for m in mine])
        if run.scenario == "http-latency":
            per_proxy[proxy]["rate_asked"] = median([m.detail["rate_asked"] for m in mine])
            per_proxy[proxy]["rate_achieved"] = median([m.detail["rate_achieved"]
                                                        for m in mine])
            per_proxy[proxy]["max_queue"] = max((m.detail["max_queue"] for m in mine), default=0)
        if run.scenario == "idle":
            per_proxy[proxy]["rss_before_kib"] = median([m.detail["rss_before_kib"]
                                                         for m in mine])
            per_proxy[proxy]["rss_holding_kib"] = median([m.detail["rss_holding_kib"]
                                                          for m in mine])
            per_proxy[proxy]["pss_before_kib"] = median([m.detail["pss_before_kib"]
                                                         for m in mine])
            per_proxy[proxy]["pss_holding_kib"] = median([m.detail["pss_holding_kib"]
                                                          for m in mine])
            per_proxy[proxy]["pss_per_connection"] = median([
                (m.detail["pss_holding_kib"] - m.detail["pss_before_kib"]) / m.detail["established"]
                for m in mine if m.detail["established"]])
            per_proxy[proxy]["established"] = min((m.detail["established"] for m in mine),
                                                  default=0)
    haproxy, ingress = per_proxy["haproxy"], per_proxy["mta-ingress"]
    compared = [haproxy, ingress]  # what the targets are about; references are not
    # Rounds alternate, so round i of each proxy ran under the same conditions, drift of
    # the machine included: the spread of these paired ratios shows how firm the ratio is.
    pairs = [(h, i) for h in measurements for i in measurements
             if h.proxy == "haproxy" and i.proxy == "mta-ingress" and h.round == i.round]
    summary: dict[str, Any] = {
        "medians": per_proxy,
        "ratio": ratio(ingress["value"], haproxy["value"]),
        "ratio_per_cpu": ratio(ingress["per_cpu"], haproxy["per_cpu"]),
        "round_ratios": [ratio(i.value, h.value) for h, i in pairs],
        "round_ratios_per_cpu": [ratio(i.per_cpu, h.per_cpu) for h, i in pairs],
        "references": {name: {"ratio": ratio(part["value"], haproxy["value"]),
                              "ratio_per_cpu": ratio(part["per_cpu"], haproxy["per_cpu"])}
                       for name, part in per_proxy.items() if name not in COMPARED},
    }
    target = TARGETS.get(run.scenario)
    if target is not None:
        saturated = all(_proxy_busy(p) >= SATURATED for p in compared)
        if run.layout.proxy is None:
            # Unpinned, the proxies share the CPUs with the load: CPU shares say little about
            # capacity, so throughput decides, and the verdict is only indicative.
            decisive = "throughput (unpinned run: indicative)"
        else:
            decisive = "throughput" if saturated else "per-cpu"
        figure = summary["ratio"] if decisive != "per-cpu" else summary["ratio_per_cpu"]
        verdict = qualified(pass_fail(figure, target), compared)
        summary["target"] = {
            "min_ratio": target,
            "throughput": pass_fail(summary["ratio"], target),
            "per_cpu": pass_fail(summary["ratio_per_cpu"], target),
            "decided_by": decisive,
            "verdict": verdict,
        }
    elif run.scenario == "http-latency":
        p99_ratio = summary["ratio"]
        met = ("n/a" if p99_ratio is None else "PASS" if p99_ratio <= LATENCY_MAX_RATIO
               else "FAIL")
        verdict = qualified(met, per_proxy.values())
        summary["target"] = {"max_ratio": LATENCY_MAX_RATIO, "verdict": verdict,
                             "rule": f"ingress p99 <= {LATENCY_MAX_RATIO:g}x haproxy p99"}
    elif run.scenario == "idle":
        held = all(clean(p) and p["established"] == run_target(measurements)
                   for p in per_proxy.values())
        summary["target"] = {"verdict": "PASS" if held else "FAIL",
                             "rule": "every connection established and held, none failed"}
    return summary


def clean(part: dict[str, Any]) -> bool:
    return not any(part[key] for key in ("errors", "abnormal_ends", "stderr_alarms",
                                         "bad_exits"))


def qualified(verdict: str, parts: Iterable[dict[str, Any]]) -> str:
    """``verdict`` as the rounds of ``parts`` allow it: FAIL when one had errors (a fast proxy
    that loses sessions has not met anything), marked unreliable after DISTURBED rounds."""
    parts = list(parts)
    if not all(clean(p) for p in parts):
        return "FAIL (errors, see the rounds)"
    if any(p["disturbed_rounds"] for p in parts):
        return verdict + " (unreliable: DISTURBED rounds, re-run on a quiet machine)"
    return verdict


def run_target(measurements: list[Measurement]) -> int:
    return int(measurements[0].detail["target"]) if measurements else 0


def pass_fail(value: float | None, target: float) -> str:
    """PASS when ``value`` (a ratio) is at least ``target``."""
    if value is None:
        return "n/a"
    return "PASS" if value >= target else "FAIL"


def _proxy_busy(part: dict[str, Any]) -> float:
    # The process's own share: the core's may include another program (see DISTURBED).
    return float(part["cpu"]["proxy"] or 0.0)


def bottleneck(part: dict[str, Any], layout: Layout) -> str:
    cpu = part["cpu"]
    proxy = _proxy_busy(part)
    load_side = cpu.get("load_core") or (cpu["loadgen"] or 0.0) + (cpu["backend"] or 0.0)
    if layout.proxy is None:
        machine = cpu.get("machine") or 0.0
        busy = (f"all CPUs {machine * 100:.0f}% busy: proxy {(cpu['proxy'] or 0) * 100:.0f}%, "
                f"load generator and backend "
                f"{((cpu['loadgen'] or 0) + (cpu['backend'] or 0)) * 100:.0f}% of one CPU")
        if machine >= SATURATED:
            return f"the machine ({busy})"
        return f"neither the proxy nor the machine ({busy})"
    if proxy >= SATURATED:
        return "the proxy (its CPU is saturated)"
    if load_side >= SATURATED:
        return (f"the load generator side (its CPU is {load_side * 100:.0f}% busy: "
                f"loadgen + backend); the proxy used {proxy * 100:.0f}% of its CPU")
    return "neither CPU is saturated (latency or concurrency bound)"


def rounds_text(ratios: list[float | None]) -> str:
    return f" (rounds: {', '.join(number(r, 2) for r in ratios)})" if len(ratios) > 1 else ""


def trouble(part: dict[str, Any]) -> str:
    notes = [f"{part[key]} {label}" for key, label in (
        ("abnormal_ends", "abnormal session ends"), ("stderr_alarms", "alarming stderr lines"),
        ("bad_exits", "non-zero exits")) if part.get(key)]
    text = ("  TROUBLE: " + ", ".join(notes)) if notes else ""
    if part.get("disturbed_rounds"):
        text += f"  DISTURBED rounds: {part['disturbed_rounds']} (another program used the CPUs)"
    return text


def summary_text(run: Run, summary: dict[str, Any], options: argparse.Namespace) -> list[str]:
    medians = summary["medians"]
    h, i = medians["haproxy"], medians["mta-ingress"]
    lines = [f"{run.key}: {describe_scenario(run, options)}"]
    if run.scenario == "idle":
        for name, part in medians.items():
            lines.append(
                f"  {name:<11} established {part['established']:,} (min over rounds)  "
                f"failed/lost {part['errors']}{trouble(part)}  "
                f"RSS {number(part['rss_before_kib'] / 1024, 1)} -> "
                f"{number(part['rss_holding_kib'] / 1024, 1)} MiB (PSS "
                f"{number(part['pss_before_kib'] / 1024, 1)} -> "
                f"{number(part['pss_holding_kib'] / 1024, 1)})  "
                f"{number(part['value'], 2)} KiB RSS per connection (median; by PSS "
                f"{number(part['pss_per_connection'], 2)})")
        lines.append(f"  ratio ingress/haproxy RSS per connection: {number(summary['ratio'], 2)}x"
                     f"{rounds_text(summary['round_ratios'])}")
        lines.append(f"  target: {summary['target']['rule']}: {summary['target']['verdict']}")
        return lines
    if run.scenario == "http-latency":
        for name, part in medians.items():
            lines.append(
                f"  {name:<11} p50 {number(part['latency_p50_ms'], 2)} ms  p99 "
                f"{number(part['latency_p99_ms'], 2)} ms (medians)  at "
                f"{number(part['rate_achieved'])}/{number(part['rate_asked'])} requests/s "
                f"(achieved/asked)  max queued {part['max_queue']}  CPU {cpu_text(part['cpu'])}"
                f"  errors {part['errors']}{trouble(part)}")
        lines.append(f"  ratio ingress/haproxy p99: {number(summary['ratio'], 2)}x"
                     f"{rounds_text(summary['round_ratios'])}; p50: "
                     f"{number(ratio(i['latency_p50_ms'], h['latency_p50_ms']), 2)}x")
        lines.append(f"  target: {summary['target']['rule']}: {summary['target']['verdict']}")
        return lines
    unit, per_cpu_unit = UNITS[run.scenario]
    what = cost_unit(run.scenario)
    for name, part in medians.items():
        cpu = part["cpu"]
        lines.append(
            f"  {name:<11} {number(part['value']):>9} {unit} (median)  CPU {cpu_text(cpu)}  "
            f"{number(part['per_cpu'])} {per_cpu_unit}  "
            f"errors {part['errors']}"
            + trouble(part))
        if what is not None and part.get(f"proxy_us_per_{what}") is not None:
            total, kernel = part[f"proxy_us_per_{what}"], part[f"proxy_sys_us_per_{what}"]
            lines.append(f"  {'':<11} proxy CPU per {what} {total:.0f} us: user "
                         f"{total - kernel:.0f} us, kernel {kernel:.0f} us"
                         + (f"; wrk latency p50 {number(part['latency_p50_ms'], 2)} ms p99 "
                            f"{number(part['latency_p99_ms'], 2)} ms (closed loop)"
                            if what == "request" else ""))
    lines.append(f"  ratio ingress/haproxy: {number(summary['ratio'], 2)}x {unit}"
                 f"{rounds_text(summary['round_ratios'])}; {number(summary['ratio_per_cpu'], 2)}x "
                 f"{per_cpu_unit}{rounds_text(summary['round_ratios_per_cpu'])}")
    references = summary.get("references", {})
    for name, reference in references.items():
        lines.append(f"  reference {name}/haproxy: {number(reference['ratio'], 2)}x {unit}; "
                     f"{number(reference['ratio_per_cpu'], 2)}x {per_cpu_unit}")
    if "mta-ingress+jemalloc" in references:
        lines.append("  (mta-ingress+jemalloc: the same build and configuration, with jemalloc "
                     "preloaded as its C allocator)")
    for engine in ("epoll", "uvloop"):
        if f"mta-ingress+{engine}" in references:
            lines.append(f"  (mta-ingress+{engine}: the same build and configuration, with "
                         f'io_engine = "{engine}" on its tcp listener)')
    if any(name.startswith("floor") for name in references):
        if run.scenario == "sessions":
            lines.append("  (references: loadtest/floor.py --tcp, uvloop's TCP transports "
                         "without mta-ingress's work; floor-epoll: the same relay on an epoll "
                         "set of its own under uvloop (--epoll); +N us: that much busy CPU "
                         "added per session)")
        else:
            lines.append("  (references: loadtest/floor.py, uvloop and httptools without "
                         "mta-ingress's work; +N us: that much busy CPU added per request)")
    lines.append(f"  limited by: haproxy: {bottleneck(h, run.layout)}; "
                 f"mta-ingress: {bottleneck(i, run.layout)}")
    target = summary.get("target")
    if target:
        why = {"throughput": "both proxies saturated their CPU, so throughput compares capacity",
               "per-cpu": "a proxy did not saturate its CPU, so its throughput measured the load "
                          "generator; the per-CPU figure estimates capacity"
               }.get(target["decided_by"], "the proxies shared the CPUs with the load")
        lines.append(f"  target ingress >= {target['min_ratio']:.2f}x haproxy: throughput "
                     f"{target['throughput']}, per proxy-CPU-s {target['per_cpu']} -> "
                     f"{target['verdict']} (decided by {target['decided_by']}: {why})")
    return lines
