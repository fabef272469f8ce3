"""The reference server as tests run it: started in a subprocess on a free port, its
request counts read from ``/metrics``, its admin verbs run through the CLI."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

_METRIC_RE = re.compile(
    r'^pictofs_http_requests_total\{method="(?P<method>[^"]*)",route="(?P<route>[^"]*)",'
    r'status="(?P<status>\d+)"\}\s+(?P<count>[0-9.e+]+)$'
)


@dataclass
class ServerHandle:
    """A running reference server: where it listens and how to ask it things."""

    base_url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)
    profile: str = "reference"  # ``pictofs serve --profile``
    storage_url: str | None = None  # the storage listener's own URL (hosted profile)

    def metrics(self) -> Counter[tuple[str, str, int]]:
        """Request counts by (method, route template, status) since the server started."""
        text = requests.get(self.base_url + "/metrics", timeout=10).text
        counts: Counter[tuple[str, str, int]] = Counter()
        for line in text.splitlines():
            match = _METRIC_RE.match(line.strip())
            if match:
                key = (match["method"], match["route"], int(match["status"]))
                counts[key] = int(float(match["count"]))
        return counts

    def settled_metrics(self) -> Counter[tuple[str, str, int]]:
        """``metrics`` once the counts stop moving, without the ``/metrics`` route (which
        counts these reads themselves): the server counts a request once its answer is
        sent, which can come just after the client got the last byte, so a snapshot taken
        right after a request may miss it (a loaded machine made one). Read until two
        reads 50 ms apart agree (at most 2 s)."""
        def read() -> Counter[tuple[str, str, int]]:
            return Counter({key: n for key, n in self.metrics().items()
                            if key[1] != "/metrics"})

        last = read()
        for _ in range(40):
            time.sleep(0.05)
            now = read()
            if now == last:
                return now
            last = now
        return last

    def calls(self, method: str | None = None, route: str | None = None) -> int:
        """Total requests matching ``method`` and a ``route`` template (substring match
        when it does not start with ``/``; exact otherwise)."""
        total = 0
        for (m, r, _status), count in self.metrics().items():
            if method and m != method:
                continue
            if route and (r != route if route.startswith("/") else route not in r):
                continue
            total += count
        return total

    def _admin(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pictofs", "serve", "--data", str(self.data_dir), *args],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pictofs serve {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1].strip()

    def create_org(self, name: str) -> str:
        return self._admin("--create-org", name)

    def create_key(self, role: str, org: str | None = None) -> str:
        return self._admin("--create-key", role, *(["--org", org] if org else []))

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"X-API-Key": key or self.key}


def free_port() -> int:
    """A TCP port on loopback that is free now (for a server restarted on the same port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, log_path: Path, *extra_args: str,
                 timeout: float = 30, port: int = 0) -> ServerHandle:
    """Start ``pictofs serve`` and wait until it answers ``/healthz``. ``port`` 0 picks a
    free one; a fixed ``port`` lets a test restart a server where its clients expect it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    state = data_dir / "server.json"
    if state.exists():
        state.unlink()
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pictofs", "serve", "--data", str(data_dir), "--port", str(port),
         *extra_args],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log_path.read_text()}")
        try:
            info = json.loads(state.read_text())
            base_url = info["base_url"]
            if requests.get(base_url + "/healthz", timeout=2).ok:
                key = (data_dir / "owner.key").read_text().strip()
                return ServerHandle(base_url, key, data_dir, process, log_path,
                                    profile=info.get("profile", "reference"),
                                    storage_url=info.get("storage_url"))
        except (OSError, ValueError, KeyError, requests.RequestException):
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not start in {timeout}s: {log_path.read_text()}")


def stop_server(handle: ServerHandle, timeout: float = 15) -> int:
    """SIGTERM and wait; SIGKILL if it does not stop. Returns the exit code."""
    if handle.process.poll() is None:
        handle.process.send_signal(signal.SIGTERM)
        try:
            handle.process.wait(timeout)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait()
    return handle.process.returncode




def restart_server(handle: ServerHandle, timeout: float = 30) -> ServerHandle:
    """Stop ``handle`` (SIGTERM, as a service restart does, requests in flight or not) and
    start a server again on the same data folder and port, so that its clients' base URL
    stays valid. Returns the new handle (extra arguments of the first start are not kept)."""
    code = stop_server(handle)
    if code != 0:
        raise RuntimeError(f"server exited {code}: {handle.log_path.read_text()[-3000:]}")
    port = urlsplit(handle.base_url).port
    assert port is not None
    return start_server(handle.data_dir, handle.log_path, timeout=timeout, port=port)
