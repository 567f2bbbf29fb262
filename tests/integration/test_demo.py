"""``mta-ingress demo`` as a newcomer meets it: start it, read the guide it prints, run every
command of the guide and check that each shows what the guide promises, then Ctrl-C.

One demo process serves the whole module (it takes a second to start); the last test stops it.
Every command the guide prints is classified by ``command_kind`` and each kind is run by one
test: a command the tests do not know fails ``test_every_guide_command_is_checked``.

The egress commands are checked by what the MX stub answers: the address each session came
from, the default source for curl's CONNECT, the named one for BIND and the PROXY header.  The
``printf | nc`` line runs in ``sh`` as printed; where no ``nc`` is installed, a stand-in that does
what ``nc HOST PORT`` does with a piped input (send it, half-close, print until the server
closes) is put first on the PATH, so that the bytes the line sends are still the ones checked.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ingress.demo import single_node as demo
from tests.integration.peers import ephemeral_port_floor, require_binary

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def demo_command() -> list[str]:
    script = Path(sys.executable).with_name("mta-ingress")
    if script.exists():
        return [str(script), "demo"]
    return [sys.executable, "-m", "ingress", "demo"]


def block_is_free(base: int) -> bool:
    for name, port in demo.Ports(base).all():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((demo.host_of(name), port))
            except OSError:
                return False
    return True


def free_base_port() -> int:
    """A base port whose every demo port is free on 127.0.0.1 now; random, so that parallel
    runs rarely pick the same block; below the kernel's ephemeral range, so that no outgoing
    connection takes one of its ports before the demo binds it."""
    bases = range(20000, ephemeral_port_floor() - max(demo.OFFSETS.values()) - 1, 100)
    candidates = random.Random().sample(bases, min(100, len(bases)))
    for base in candidates:
        if block_is_free(base):
            return base
    pytest.fail("no free block of ports for the demo on 127.0.0.1")


@dataclass
class Demo:
    process: subprocess.Popen[str]
    base: int
    stderr_path: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    guide: str = ""

    @property
    def ports(self) -> demo.Ports:
        return demo.Ports(self.base)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def read_guide(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no guide within {timeout}s; stdout so far:\n"
                                   f"{''.join(seen)}\nstderr:\n{self.stderr()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the demo ended before its guide (code "
                                   f"{self.process.poll()}):\n{self.stderr()}")
            seen.append(line)
            if line.rstrip("\n") == demo.GUIDE_LAST_LINE:
                return "".join(seen)


def _pump(stream: Iterator[str], lines: queue.Queue[str | None]) -> None:
    # Keeps reading stdout for the demo's lifetime: the access log follows the guide, and a
    # full pipe would block the ingress.
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.fixture(scope="module")
def running_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    base = free_base_port()
    stderr_path = tmp_path_factory.mktemp("demo") / "stderr"
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith("MTA_INGRESS_")}
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [*demo_command(), "--base-port", str(base)], stdout=subprocess.PIPE, stderr=stderr,
            stdin=subprocess.DEVNULL, text=True, env=environ, start_new_session=True)
    running = Demo(process, base, stderr_path)
    assert process.stdout is not None
    pump = threading.Thread(target=_pump, args=(process.stdout, running.lines), daemon=True)
    pump.start()
    try:
        running.guide = running.read_guide(START_TIMEOUT)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        pump.join(STOP_TIMEOUT)  # EOF once the demo and its ingress child are gone
        process.stdout.close()


def guide_commands(guide: str) -> list[str]:
    return [line.strip() for line in guide.splitlines() if line.startswith("  ")]


def command_kind(command: str, ports: demo.Ports) -> str:
    words = shlex.split(command)
    if words[0] == "curl" and "--socks5" in words:
        return "egress-curl"
    if words[1:3] == ["-m", "ingress.demo.egress_try"]:
        return "egress-try-socks5" if "--socks5" in words else "egress-try-forward"
    if words[0] == "printf" and words[2:4] == ["|", "nc"]:
        return "egress-nc"
    if words[0] == "curl":
        url = next(word for word in words[1:] if word.startswith(("http://", "https://")))
        if url.endswith("/metrics"):
            return "metrics"
        if "/_stub/counts" in url:
            return "counts"
        if "/api/v1/send.json" in url:
            return "send.json"
        if "/.well-known/acme-challenge/" in url:
            return "acme"
        return "click"
    if words[0] == "swaks":
        port = int(words[words.index("--server") + 1].rsplit(":", 1)[1])
        return {ports["smtp587"]: "swaks-587", ports["smtp25"]: "swaks-25",
                ports["smtp587-proxied"]: "swaks-proxied"}.get(port, f"swaks-{port}")
    if words[:2] == ["python3", "-c"] and "smtplib" in words[2]:
        return "smtplib"
    return f"unknown: {words[0]}"


CHECKED_KINDS = {"click", "send.json", "acme", "swaks-587", "swaks-25", "swaks-proxied",
                 "smtplib", "metrics", "counts", "egress-curl", "egress-try-socks5", "egress-nc",
                 "egress-try-forward"}


def commands_of(running: Demo, kind: str) -> list[str]:
    found = [c for c in guide_commands(running.guide) if command_kind(c, running.ports) == kind]
    assert found, f"the guide prints no {kind} command:\n{running.guide}"
    return found


def run(command: str, *, stderr: bool = False) -> str:
    """Run a guide command exactly as printed (no shell: the guide's quoting is shell quoting,
    which shlex reproduces); it must succeed. ``stderr``: its stderr after its stdout."""
    words = shlex.split(command)
    done = subprocess.run(words, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr if stderr else done.stdout


NC_STAND_IN = """\
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(sys.stdin.buffer.read())
sock.shutdown(socket.SHUT_WR)
while data := sock.recv(65536):
    sys.stdout.buffer.write(data)
"""


def run_in_shell(command: str, tmp_path: Path) -> str:
    """Run a guide pipeline in ``sh`` as printed, with the stand-in for a missing ``nc``."""
    environ = dict(os.environ)
    if shutil.which("nc") is None:
        stand_in = tmp_path / "bin" / "nc"
        stand_in.parent.mkdir()
        stand_in.write_text(f"#!{sys.executable}\n{NC_STAND_IN}")
        stand_in.chmod(0o755)
        environ["PATH"] = f"{stand_in.parent}{os.pathsep}{environ.get('PATH', '')}"
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=environ,
                          timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def json_answer(command: str) -> dict[str, object]:
    output = run(command)
    answer: dict[str, object] = json.loads(output)
    return answer


# --- the guide itself -----------------------------------------------------------------------


def test_every_guide_command_is_checked(running_demo: Demo) -> None:
    kinds = [command_kind(c, running_demo.ports) for c in guide_commands(running_demo.guide)]
    assert set(kinds) == CHECKED_KINDS, running_demo.guide
    # The spec's promises: a click, an HTTPS send.json with -k, SMTP on 587 and 25, /metrics.
    assert any("curl -sk https://" in c and "send.json" in c
               for c in guide_commands(running_demo.guide))


# --- each kind of command, run as printed -----------------------------------------------------


def test_click_is_answered_by_the_event_tracker_with_x_forwarded_for(running_demo: Demo) -> None:
    require_binary("curl")
    for command in commands_of(running_demo, "click"):
        answer = json_answer(command)
        assert answer["service"] == "event-tracker"
        assert answer["method"] == "GET"
        assert answer["x_forwarded_for"] == "127.0.0.1"
        assert answer["client"] == "127.0.0.1"
        assert isinstance(answer["path"], str)
        assert answer["path"] in command


def test_send_json_over_https_is_answered_by_the_mta(running_demo: Demo) -> None:
    require_binary("curl")
    for command in commands_of(running_demo, "send.json"):
        assert f"https://127.0.0.1:{running_demo.ports['https']}/" in command
        answer = json_answer(command)
        assert answer["service"] == "mta"
        assert answer["method"] == "POST"
        assert answer["path"] == "/api/v1/send.json"
        assert answer["x_forwarded_for"] == "127.0.0.1"
        body = shlex.split(command)[shlex.split(command).index("-d") + 1]
        assert answer["body_bytes"] == len(body.encode())


def test_acme_validation_is_answered_by_the_tls_service(running_demo: Demo) -> None:
    require_binary("curl")
    for command in commands_of(running_demo, "acme"):
        answer = json_answer(command)
        assert answer["service"] == "tls"
        assert str(answer["path"]).startswith("/.well-known/acme-challenge/")


CLIENT = re.compile(r"client (\S+):\d+\)")


@pytest.mark.parametrize(("kind", "stub", "client"), [
    ("swaks-587", "mta.demo", "127.0.0.1"),
    ("swaks-25", "event-tracker.demo", "127.0.0.1"),
    ("swaks-proxied", "mta.demo", "203.0.113.7"),
])
def test_swaks_sessions_are_accepted_with_the_client_address(
        running_demo: Demo, kind: str, stub: str, client: str) -> None:
    require_binary("swaks")
    for command in commands_of(running_demo, kind):
        output = run(command)
        assert f"220 {stub} ESMTP demo stub; your address is {client}:" in output
        assert f"250 2.0.0 queued by {stub}" in output
        assert CLIENT.findall(output) == [client]


def test_smtplib_line_is_accepted_with_the_client_address(running_demo: Demo) -> None:
    require_binary("python3")
    for command in commands_of(running_demo, "smtplib"):
        output = run(command)
        assert "(220, b'mta.demo ESMTP demo stub; your address is 127.0.0.1:" in output
        assert "(250, b'2.0.0 queued by mta.demo (" in output
        assert CLIENT.findall(output) == ["127.0.0.1"]


def test_metrics_url_serves_prometheus_text(running_demo: Demo) -> None:
    require_binary("curl")
    for command in commands_of(running_demo, "metrics"):
        assert f"127.0.0.1:{running_demo.ports['admin']}" in command
        output = run(command)
        assert "# TYPE " in output
        assert re.search(r"^mta_ingress_\w+(\{[^}]*\})? \S+$", output, re.MULTILINE), output


def test_counts_show_what_the_mta_stub_received(running_demo: Demo) -> None:
    require_binary("curl")
    [command] = commands_of(running_demo, "counts")
    before = json_answer(command)
    assert before["service"] == "mta"
    # One more send.json through the ingress, then the count has grown by one from 127.0.0.1.
    json_answer(commands_of(running_demo, "send.json")[0])
    after = json_answer(command)
    http_before, http_after = before["http"], after["http"]
    assert isinstance(http_before, dict)
    assert isinstance(http_after, dict)
    assert http_after["requests"] == http_before["requests"] + 1
    assert (http_after["requests_by_client"]["127.0.0.1"]
            == http_before["requests_by_client"].get("127.0.0.1", 0) + 1)
    assert isinstance(after["smtp"], dict)


MX_BANNER = re.compile(rf"220 {re.escape(demo.SINK_NAME)} ESMTP demo stub; your address is "
                       r"(\S+):\d+")
MX_QUEUED = re.compile(rf"250 2\.0\.0 queued by {re.escape(demo.SINK_NAME)} \(\d+ bytes, "
                       r"client (\S+):\d+\)")


def requested_source(command: str) -> str:
    """The source a guide command asks for: ``--source``, the PROXY header's, or none."""
    words = shlex.split(command)
    if "--source" in words:
        return words[words.index("--source") + 1]
    if words[0] == "printf":
        return words[1].split()[2]
    raise AssertionError(f"no source in {command}")


def test_egress_curl_connect_leaves_from_the_default_source(running_demo: Demo) -> None:
    require_binary("curl")
    [command] = commands_of(running_demo, "egress-curl")
    output = run(command, stderr=True)  # curl -v: the MX's replies are its "<" lines
    assert MX_BANNER.findall(output) == [demo.EGRESS_SOURCES[0]], output
    assert MX_QUEUED.findall(output) == [demo.EGRESS_SOURCES[0]], output


@pytest.mark.parametrize("kind", ["egress-try-socks5", "egress-try-forward"])
def test_egress_try_leaves_from_the_source_it_names(running_demo: Demo, kind: str) -> None:
    [command] = commands_of(running_demo, kind)
    source = requested_source(command)
    assert source != demo.EGRESS_SOURCES[0]  # so that the change of address shows
    output = run(command)
    assert MX_BANNER.findall(output) == [source], output
    assert MX_QUEUED.findall(output) == [source], output
    if kind == "egress-try-socks5":
        assert f"BIND {source} granted" in output
        assert f"the proxy's socket to the MX is {source}:" in output
    assert "< 221 " in output


def test_egress_raw_proxy_header_leaves_from_its_source(running_demo: Demo,
                                                        tmp_path: Path) -> None:
    require_binary("sh")
    [command] = commands_of(running_demo, "egress-nc")
    source = requested_source(command)
    output = run_in_shell(command, tmp_path)
    assert MX_BANNER.findall(output) == [source], output
    assert "221 2.0.0 bye" in output


def test_egress_sessions_are_in_the_access_log(running_demo: Demo) -> None:
    [command] = commands_of(running_demo, "egress-try-socks5")
    run(command)
    wanted = f"source={demo.EGRESS_SOURCES[1]}"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            line = running_demo.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is not None and "kind=egress" in line and wanted in line:
            assert "listener=egress-socks" in line
            assert f"destination={demo.SINK_HOST}:{running_demo.ports[demo.SINK]}" in line
            return
    pytest.fail("no egress access log line on the demo's stdout")


def test_access_log_follows_the_guide(running_demo: Demo) -> None:
    require_binary("curl")
    json_answer(commands_of(running_demo, "click")[0])
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            line = running_demo.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is not None and "event-tracker-http" in line and "/click/" in line:
            return
    pytest.fail("no access log line for the click on the demo's stdout")


# --- stopping --------------------------------------------------------------------------------


def test_ctrl_c_stops_everything_cleanly(running_demo: Demo) -> None:
    process = running_demo.process
    process.send_signal(signal.SIGINT)
    code = process.wait(STOP_TIMEOUT)
    stderr = running_demo.stderr()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert 'msg="stopped"' in stderr  # the ingress's own clean shutdown
    # Nothing of the demo is left: every port of the block can be bound again.
    deadline = time.monotonic() + 5.0
    while not block_is_free(running_demo.base):
        assert time.monotonic() < deadline, "the demo's ports are still bound"
        time.sleep(0.05)


def test_ctrl_c_on_the_terminal_ends_make_demo_with_status_0() -> None:
    """``make demo`` as a user runs it: on a terminal, as the shell's foreground job, Ctrl-C
    typed on the keyboard (the terminal sends SIGINT to its foreground process group)."""
    make = require_binary("make")
    script = Path(sys.executable).with_name("mta-ingress")
    if not script.exists():
        pytest.skip("no mta-ingress console script beside this interpreter")
    venv = script.parent.parent
    base = free_base_port()
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("MTA_INGRESS_", "MAKE", "MFLAGS"))}
    # -o: the virtualenv is taken as installed, so make runs nothing but the demo.
    argv = [make, "--no-print-directory", "-C", str(ROOT), "-o", f"{venv}/.installed", "demo",
            f"VENV={venv}", f"DEMO_ARGS=--base-port {base}"]
    controller, terminal = pty.openpty()

    def become_terminal_job() -> None:
        # In the child, after setsid: the pty becomes its controlling terminal, and make's
        # process group its foreground, as a shell with job control leaves it.
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=terminal,
                                   env=environ, start_new_session=True,
                                   preexec_fn=become_terminal_job)
    finally:
        os.close(terminal)
    output = b""

    def read_until(done: Callable[[], bool], timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: every process holding the terminal has gone
                    return
                if not chunk:
                    return
                output += chunk

    try:
        read_until(lambda: demo.GUIDE_LAST_LINE.encode() in output, START_TIMEOUT)
        assert demo.GUIDE_LAST_LINE.encode() in output, output.decode(errors="replace")
        os.write(controller, b"\x03")  # Ctrl-C, as the terminal's line discipline reads it
        read_until(lambda: process.poll() is not None, STOP_TIMEOUT)
        code = process.wait(STOP_TIMEOUT)
        read_until(lambda: False, 0.5)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        os.close(controller)
    text = output.decode(errors="replace")
    assert code == 0, text
    assert "demo: stopping" in text
    assert 'msg="stopped"' in text  # the ingress's own clean shutdown
    assert "Interrupt" not in text  # make's "*** [Makefile:..: demo] Interrupt"
    assert "Traceback" not in text
    assert "Error" not in text
    deadline = time.monotonic() + 5.0
    while not block_is_free(base):
        assert time.monotonic() < deadline, "the demo's ports are still bound"
        time.sleep(0.05)


# --- a port already taken ---------------------------------------------------------------------


def test_a_taken_port_fails_with_one_line_naming_it_and_the_option() -> None:
    base = free_base_port()
    taken = demo.Ports(base)["https"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen(1)
        done = subprocess.run([*demo_command(), "--base-port", str(base)], capture_output=True,
                              text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
                              check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert str(taken) in lines[0]
    assert "--base-port" in lines[0]
    assert block_is_free(base)  # the stub ports it had claimed were given back
