"""Where an ingress worker's time goes under load: py-spy samples, summarised by source line.

py-spy is not a dependency of the project: install it into the bench environment with
``.venv-bench/bin/pip install py-spy``.  The default mode (``--nonblocking``) reads the worker's
memory without stopping it; its Python stacks end at the frame that called into C, so time spent
in uvloop's C code and in system calls shows as the self time of that frame (the event loop's
``Runner.run`` line for callbacks that uvloop runs itself).  ``native`` mode stops the worker at
each sample to unwind C frames too: it shows the system calls, at the price of slowing the
worker down while it is measured.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

SAMPLE_RATE = 250
_LINE = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Frames of the project, whatever the install path: the files the ingress is made of.
_OWN = ("ingress/", "routing/", "tls/")
# Start-up frames every sample of a worker passes through: 100% inclusive, telling nothing.
_BOOTSTRAP = ("(ingress/cli.py)", "(ingress/process/server.py)")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def command(py_spy: str, pid: int, seconds: float, output: Path, *, native: bool) -> list[str]:
    return [py_spy, "record", "--format", "raw", "--rate", str(SAMPLE_RATE),
            "--duration", str(max(1, round(seconds))), "--pid", str(pid), "--output", str(output),
            *(["--native"] if native else ["--nonblocking"])]


def _short(frame: str) -> str:
    match = _LINE.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in _OWN:
        at = path.rfind(marker)
        if at >= 0:
            path = path[at:]
            break
    else:
        path = path.rsplit("site-packages/", 1)[-1]
    return f"{match['function']} ({path}:{match['line']})" if match["line"] else \
        f"{match['function']} ({path})"


def _function(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def summarise(raw_files: list[Path], top: int = 15) -> list[str]:
    self_by_line: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    total = 0
    for path in raw_files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [_short(frame) for frame in stack.split(";") if frame]
            if not frames:
                continue
            self_by_line[frames[-1]] += count
            for function in {_function(frame) for frame in frames}:
                if (any(f"({marker}" in function for marker in _OWN)
                        and not function.endswith(_BOOTSTRAP)):
                    own_inclusive[function] += count
    if not total:
        return ["  no samples (was py-spy allowed to attach? it needs ptrace rights)"]
    lines = [f"  {total:,} samples of the busy worker (idle time excluded)",
             "  self time by source line (for a Python frame: the line itself plus the C code "
             "and system calls it called):"]
    for frame, count in self_by_line.most_common(top):
        lines.append(f"    {count / total:6.1%}  {frame}")
    lines.append("  inclusive time by function of the project (callees included):")
    for function, count in own_inclusive.most_common(top):
        lines.append(f"    {count / total:6.1%}  {function}")
    return lines
