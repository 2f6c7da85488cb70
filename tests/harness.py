"""Harnesses shared by the tests (not a test module): `tessera hub` processes on loopback, work
loops run in threads, and a factory module that leaves marker files when imported or called."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSummary

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/runs", timeout=1).status_code == 401:  # up, and asks for a token
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"hub at {url} did not come up")


def start_hub(
    home: Path, port: int, database_url: str, *options: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `tessera hub` process on 127.0.0.1:port with ``options`` (and ``env`` added to the
    environment), returned once it answers."""
    cmd = [
        sys.executable,
        "-m",
        "tessera",
        "hub",
        "--home",
        str(home),
        "--port",
        str(port),
        "--database",
        database_url,
        "--threads",
        "1",
        *options,
    ]
    environment = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    wait_until_up(f"http://127.0.0.1:{port}", proc)
    return proc


def run_loops(
    loops: list[WorkLoop], timeout: float = 180, on_done: Callable[[WorkerSummary], None] | None = None
) -> list[BaseException]:
    """Run work loops in threads until they end; return what any of them raised."""
    errors: list[BaseException] = []

    def work(loop: WorkLoop) -> None:
        try:
            summary = loop.run()
            if on_done is not None:
                on_done(summary)
        except BaseException as exc:  # returned to the test, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


FACTORY_MODULE = """
import os, pathlib
MARKS = pathlib.Path(os.environ["TESSERA_TEST_MARKS"])
(MARKS / f"{__name__}-imported-{os.getpid()}").touch()

def build(context: int = 16):
    (MARKS / f"{__name__}-called-{os.getpid()}").touch()
    from tessera.models.lm import build as lm
    return lm(context=context, d_model=16, n_layers=1, n_heads=2)
"""


def write_factory_module(folder: Path, name: str) -> Path:
    """A module ``name`` in ``folder`` that leaves marker files in ``folder/marks``: NAME-imported-PID
    when imported, NAME-called-PID when its ``build`` is called."""
    (folder / f"{name}.py").write_text(FACTORY_MODULE)
    marks = folder / "marks"
    marks.mkdir(exist_ok=True)
    return marks
