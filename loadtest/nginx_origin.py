"""nginx (Debian ``nginx-light``) as the HTTP scenarios' origin, behind backend.py's control
protocol: ``port N`` once listening, then a JSON line of counters per ``stats`` line on stdin,
and nginx stopped when stdin ends.

The stub origin of ``backend.py`` answers from a Python loop; an independent run measured the
proxies against nginx, whose replies come at a different pace (one worker, sendfile, its own
keep-alive handling), so ``bench.py --origin nginx`` measures them that way too. The answers
are the stub's: the same small body on every path, 1 MiB under ``/1m``. nginx runs one worker
process, on the CPU this wrapper was pinned to (taskset is inherited), logging nothing; its
counters come from ``stub_status`` on a Unix socket of its own, which the load never reaches.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # `python loadtest/nginx_origin.py` puts loadtest/, not the repository, first on sys.path.
    sys.path.insert(0, str(ROOT))

from loadtest import backend  # noqa: E402

NGINX = "/usr/sbin/nginx"
# the stub's answers; the small body as written inside nginx's quoted string
SMALL_BODY = backend.HTTP_SMALL_BODY.decode().replace("\n", "\\n")
READY_TIMEOUT = 10.0

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {dir}/www;
        location / {{
            return 200 "{small}";
        }}
        location /1m {{
            default_type application/octet-stream;
            try_files /1m.bin =404;
        }}
    }}
    server {{
        listen unix:{dir}/status.sock;
        location / {{
            stub_status;
        }}
    }}
}}
"""


def write_config(directory: Path, port: int) -> Path:
    (directory / "www").mkdir(parents=True, exist_ok=True)
    (directory / "www" / "1m.bin").write_bytes(b"x" * backend.HTTP_LARGE_BODY_SIZE)
    path = directory / "nginx.conf"
    path.write_text(CONFIG.format(dir=directory, port=port, small=SMALL_BODY))
    return path


def parse_stub_status(text: str) -> dict[str, int]:
    """stub_status's counters: ``Active connections: N``, then ``accepts handled requests``
    and their three figures on the line after."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.split() == ["server", "accepts", "handled", "requests"]:
            accepts, _, requests = (int(value) for value in lines[index + 1].split())
            return {"accepts": accepts, "requests": requests}
    raise ValueError(f"not a stub_status page: {text!r}")


def query(status_socket: Path) -> dict[str, int]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(status_socket))
        sock.sendall(b"GET / HTTP/1.0\r\nHost: status\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return parse_stub_status(answer.partition(b"\r\n\r\n")[2].decode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("mode", choices=("http",))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    backend.raise_nofile()  # inherited by nginx, which holds up to worker_connections
    directory = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    # nginx's worker drops to its own user where started as root: it must read the files
    directory.chmod(0o755)
    status_socket = directory / "status.sock"
    nginx = subprocess.Popen([NGINX, "-c", str(write_config(directory, args.port)),
                              "-p", str(directory)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                baseline = query(status_socket)
                break
            except OSError:
                if nginx.poll() is not None or time.monotonic() > deadline:
                    print((directory / "error.log").read_text() if
                          (directory / "error.log").exists() else "nginx did not start",
                          file=sys.stderr)
                    return 1
                time.sleep(0.05)
        # stub_status counts each query of its own, the one it answers included: the baseline's
        # is in the baseline, each later one is taken off
        queries = 0
        backend.announce(args.port)
        for line in sys.stdin:
            if line.strip() != "stats":
                continue
            counters = query(status_socket)
            queries += 1
            backend.answer({"sessions": counters["accepts"] - baseline["accepts"] - queries,
                            "requests": counters["requests"] - baseline["requests"] - queries,
                            "bytes": 0, "proxy_errors": 0})
    finally:
        nginx.send_signal(signal.SIGQUIT)  # graceful: open connections finish
        try:
            nginx.wait(5)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
