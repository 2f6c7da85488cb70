"""A hub and its workers on this machine, for tests, benchmarks and the demo.

A hub runs as a `tessera hub` process on a loopback port (``start_hub``) or in this process on
a thread (``embedded_hub``); workers run as `tessera worker` processes (``start_worker``) or as
work loops on threads (``run_loops``). Every wait here is on a condition (a process answers, a
run finishes, a process exits) with a deadline, never for a fixed time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tessera.api.client import HubClient
from tessera.api.messages import RunStatus
from tessera.errors import TesseraError
from tessera.trust import Trust
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSummary

ROOT = Path(__file__).resolve().parents[2]  # the checkout: `python -m tessera` runs from here
POLL_S = 0.05


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = POLL_S) -> None:
    """Return as soon as ``condition()`` holds (checked every ``every_s``); TimeoutError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(every_s)


def tessera_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera", *args]


def start_hub(
    home: Path,
    port: int,
    *options: str,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    timeout_s: float = 60,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """A `tessera hub` process on 127.0.0.1:``port`` (one torch thread; SQLite in ``home``
    unless ``database_url``) with ``options``, started in ``cwd``, returned once it answers; its
    output goes to ``log`` (else nowhere)."""
    database = ("--database", database_url) if database_url else ()
    cmd = tessera_command("hub", "--home", str(home), "--port", str(port), *database, "--threads", "1",
                          *options)  # fmt: skip
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    try:
        wait_until(lambda: hub_answers(f"http://127.0.0.1:{port}", proc), timeout_s, f"hub on port {port}")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def hub_answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    """Whether the hub at ``url`` is up (it asks for a token); RuntimeError if its process exited."""
    if proc.poll() is not None:
        raise RuntimeError(f"hub process exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/v1/runs", timeout=1).status_code == 401
    except httpx.TransportError:
        return False


def start_worker(
    hub: tuple[str, str, str] | tuple[str, str],
    state_dir: Path,
    *options: str,
    name: str = "worker",
    log: Path | None = None,
    threads: int = 1,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """`tessera worker` on ``hub`` (url, token, run id; without a run id it serves the pool) in
    ``cwd``, with its state in ``state_dir`` and its output in ``log`` (default:
    ``state_dir``/worker.log); ``prefix`` wraps the command (e.g. to run it in an emulated node)."""
    url, token, *run = hub
    state_dir.mkdir(parents=True, exist_ok=True)
    runs = ("--run", run[0]) if run else ()
    cmd = [*prefix, *tessera_command("worker", "--hub", url, "--token", token, *runs,
           "--name", name, "--threads", str(threads), "--state-dir", str(state_dir), *options)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    with (log or state_dir / "worker.log").open("ab") as out:
        return subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=environment)


def wait_workers(
    procs: Sequence[subprocess.Popen[bytes]], timeout_s: float, logs: Path, what: str = "a worker"
) -> None:
    """Wait for every process to exit; RuntimeError naming ``logs`` (where their logs are) if
    one (``what``) failed."""
    for p in procs:
        if p.wait(timeout=timeout_s) != 0:
            raise RuntimeError(f"{what} exited with {p.returncode}; see its log in {logs}")


def stop(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    """Terminate the processes still running; kill those that do not exit within ``timeout_s``."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for_run(
    client: HubClient,
    run_id: str,
    procs: Sequence[subprocess.Popen[bytes]],
    on_status: Callable[[RunStatus], None],
    every_s: float = 0.5,
) -> RunStatus:
    """The run's status once it has finished, shown to ``on_status`` every ``every_s`` meanwhile;
    TesseraError if every worker exited first."""
    while (status := client.status(run_id)).status != "finished":
        on_status(status)
        if all(p.poll() is not None for p in procs):
            codes = [p.returncode for p in procs]
            raise TesseraError(
                f"all workers exited (codes {codes}) before the run finished; "
                "see worker.log in each worker folder"
            )
        time.sleep(every_s)
    on_status(status)
    return status


@contextmanager
def embedded_hub(home: Path, trust: Trust | None = None, replay: bool = True) -> Iterator[tuple[str, str]]:
    """Serve a hub on a free port of 127.0.0.1 in this process; yields its URL and admin token.
    ``replay``: whether it replays workers' contributions to check their claims."""
    import uvicorn

    from tessera.hub.app import admin_token, create_app, open_service
    from tessera.hub.config import HubConfig, VerifySettings

    verify = VerifySettings() if replay else VerifySettings(fraction=0.0, trust_after=0)
    service = open_service(home, config=HubConfig(trust=trust or Trust(), verify=verify))
    admin = admin_token(service, home)
    if admin is None:
        raise TesseraError(f"{home} has a hub database but no admin.token; use another --home")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise TesseraError("the embedded hub failed to start; see the log above")
        return server.started

    try:
        wait_until(started, 60, "the embedded hub's start")
        yield f"http://127.0.0.1:{port}", admin
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        service.state.close()


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
        except BaseException as exc:  # returned to the caller, which asserts on it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(loop,)) for loop in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors
