"""A `tessera hub` process on a free loopback port, for the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_hub(home: Path, port: int, timeout_s: float = 120) -> subprocess.Popen[bytes]:
    """Start the hub (SQLite in ``home``, one torch thread) and return once it answers."""
    cmd = [sys.executable, "-m", "tessera", "hub", "--home", str(home), "--port", str(port), "--threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/runs", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("hub did not start")
