"""CPU time and resident memory of process trees, read from /proc.

The ingress is a supervisor with forked workers, HAProxy a single process: both are measured as
the tree under the PID the bench started, so that neither is credited for work done in a child
the other does not have.  Only live processes are summed: ``cutime``/``cstime`` would count a
child only once it has been reaped, i.e. never during a measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))  # state, ppid, pgrp, ...
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    result = [root]
    index = 0
    while index < len(result):
        result.extend(parents.get(result[index], ()))
        index += 1
    return result


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU time of these processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])  # utime, field 14 of proc(5)
            system += int(fields[12])  # stime, field 15
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS in KiB.  Pages shared after fork are counted in each process, as the
    kernel's per-process RSS (and a container's working set, roughly) counts them."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as file:
                for line in file:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def pss_kib(pids: list[int]) -> int:
    """Sum of the proportional set sizes in KiB: pages shared after fork counted once overall,
    which the RSS sum of a supervisor and its workers does not do."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
                for line in file:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU, from /proc/stat: (busy, total) clock ticks since boot.  Busy includes interrupt
    and softirq time whoever it was done for, e.g. by ksoftirqd, which no process tree of the
    bench is charged with."""
    cores: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as file:
        for line in file:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
            busy = user + nice + system + irq + softirq + steal
            cores[int(name[3:])] = (busy, busy + idle + iowait)
    return cores


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds of a few named process trees, and the CPUs' tick counters, at one monotonic
    instant."""

    at: float
    seconds: dict[str, float]  # user + system
    system: dict[str, float]
    cores: dict[int, tuple[int, int]]


def sample(trees: dict[str, list[int]], at: float) -> CpuSample:
    times = {name: cpu_seconds(pids) for name, pids in trees.items()}
    return CpuSample(at, {name: user + system for name, (user, system) in times.items()},
                     {name: system for name, (_, system) in times.items()}, core_ticks())


def utilisation(start: CpuSample, end: CpuSample) -> dict[str, float]:
    """Fraction of one CPU each tree used between two samples (1.0 = one core busy), as
    ``NAME_sys`` the part of it spent in the kernel, and as ``cpuN`` how busy CPU N was."""
    wall = end.at - start.at
    result = {name: (end.seconds[name] - start.seconds[name]) / wall for name in start.seconds}
    for name in start.system:
        result[f"{name}_sys"] = (end.system[name] - start.system[name]) / wall
    for cpu, (busy, total) in end.cores.items():
        before = start.cores.get(cpu)
        if before is not None and total > before[1]:
            result[f"cpu{cpu}"] = (busy - before[0]) / (total - before[1])
    return result
