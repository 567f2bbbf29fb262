"""Runs the real ``mta-ingress run --config FILE`` process for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from tests.integration.peers import free_port


class IngressProcess:
    """``python -m ingress run --config FILE`` with stdout (access log) and stderr captured."""

    def __init__(self, workdir: Path, config_text: str, *, extra_args: tuple[str, ...] = (),
                 command_prefix: tuple[str, ...] = ()) -> None:
        """``command_prefix``: what runs the ingress (it must exec it, keeping the pid that
        signal() signals), e.g. tests.integration.peers.LOOPBACK_RESOLVER."""
        self.workdir = workdir
        self.config_path = workdir / "ingress.toml"
        self.admin_port: int | None = None
        if "[admin]" not in config_text:
            # The default admin address is every interface's port 10081: tests stay on loopback
            # and on a port of their own.
            self.admin_port = free_port()
            config_text += f'\n[admin]\nbind = ["127.0.0.1:{self.admin_port}"]\n'
        self.config_path.write_text(config_text)
        self.stdout_path = workdir / "ingress.stdout"
        self.stderr_path = workdir / "ingress.stderr"
        self.extra_args = extra_args
        self.command_prefix = command_prefix
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, wait_ready: bool = True, timeout: float = 10.0) -> None:
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-m", "ingress", "run", "--config",
                 str(self.config_path),
                 *self.extra_args],
                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if wait_ready:
            self.wait_for_stderr('msg="ready"', timeout)

    def wait_for_stderr(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr():
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"mta-ingress exited {self.process.returncode}:\n"
                                   f"{self.stderr()}")
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} not seen in mta-ingress stderr:\n{self.stderr()}")

    def access_lines(self, minimum: int = 0, timeout: float = 5.0) -> list[str]:
        """Access log lines; waits (bounded) for at least ``minimum`` of them, since the log is
        flushed in batches."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.stdout_path.read_text().splitlines()
            if len(lines) >= minimum or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.process is not None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> IngressProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def tcp_config(listeners: dict[str, dict[str, object]], backends: dict[str, dict[str, object]],
               **top: object) -> str:
    """A ``preset = "none"`` configuration text from plain dicts."""
    def value(item: object) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str):
            return f'"{item}"'
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(x) for x in item) + "]"
        if isinstance(item, dict):
            return "{" + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + "}"
        return str(item)

    lines = ['preset = "none"']
    top = {"workers": 1, **top}
    lines += [f"{key} = {value(item)}" for key, item in top.items() if key != "timeouts"]
    if "timeouts" in top:
        lines.append(f"timeouts = {value(top['timeouts'])}")
    for name, body in listeners.items():
        lines.append(f'[listeners."{name}"]')
        lines += [f"{key} = {value(item)}" for key, item in body.items()]
    for name, body in backends.items():
        lines.append(f'[backends."{name}"]')
        lines += [f"{key} = {value(item)}" for key, item in body.items()]
    return "\n".join(lines) + "\n"
