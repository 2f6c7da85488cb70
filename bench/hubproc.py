"""A `tessera hub` process on a free loopback port, and `tessera worker` processes, for the benchmarks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
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


def start_worker(
    stack: ExitStack,
    work: Path,
    name: str,
    hub: tuple[str, str, str],
    *options: str,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """`tessera worker` on ``hub`` (url, token, run id) with one torch thread, its state in
    ``work/name`` and its output in ``work/name.log`` (closed by ``stack``); ``prefix`` wraps the
    command (e.g. to run it in an emulated node)."""
    url, token, run_id = hub
    cmd = [*prefix, sys.executable, "-m", "tessera", "worker", "--hub", url, "--token", token,
           "--run", run_id, "--name", name, "--threads", "1",
           "--state-dir", str(work / name), *options]  # fmt: skip
    log = stack.enter_context((work / f"{name}.log").open("w"))
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_workers(
    procs: Sequence[subprocess.Popen[bytes]], timeout_s: float, work: Path, what: str = "a worker"
) -> None:
    """Wait for every process; RuntimeError naming ``work`` (their logs) if one failed."""
    for p in procs:
        if p.wait(timeout=timeout_s) != 0:
            raise RuntimeError(f"{what} exited with {p.returncode}; see its log in {work}")
