"""Emulated networks on one Linux machine, for tests and benchmarks (needs root and iproute2).

Each emulated node gets a network namespace joined to the host by a veth pair. ``tc``'s token
bucket filter (tbf) limits the pair's bandwidth in both directions; latency is added in user
space by ``DelayProxy``, a TCP proxy that holds every chunk for the link's one-way latency in
each direction (this kernel's netem is unavailable). A ``CpuLimit`` (cgroup CPU quota) makes a
node slower than the machine. ``Node.command`` wraps a command to run inside all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 10_000  # short periods: a throttled step is slowed evenly, not in 100 ms lumps
CHUNK = 64 * 1024
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


class NetlabUnavailable(RuntimeError):
    """This machine cannot emulate networks (not root, no iproute2/tc, or no namespaces)."""


def run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetlabUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


def check_available() -> None:
    """Raise NetlabUnavailable with the reason unless namespaces, veth and tbf all work here."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise NetlabUnavailable("iproute2 (ip, tc) is not installed")
    with Namespace("tessera-check", 250, bandwidth_mbit=100):
        pass


@dataclass
class Namespace:
    """A network namespace at 10.77.<index>.2, the host side at 10.77.<index>.1, tbf both ways."""

    name: str
    index: int
    bandwidth_mbit: float

    @property
    def host_ip(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def ns_ip(self) -> str:
        return f"10.77.{self.index}.2"

    @property
    def veth(self) -> tuple[str, str]:
        return f"tsh{self.index}", f"tsn{self.index}"

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)  # left by a crash
        host, inside = self.veth
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        run("ip", "netns", "add", self.name)
        try:
            run("ip", "link", "add", host, "type", "veth", "peer", "name", inside)
            run("ip", "link", "set", inside, "netns", self.name)
            run("ip", "addr", "add", f"{self.host_ip}/30", "dev", host)
            run("ip", "link", "set", host, "up")
            self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", inside)
            self.exec("ip", "link", "set", inside, "up")
            self.exec("ip", "link", "set", "lo", "up")
            run("tc", "qdisc", "add", "dev", host, "root", "tbf", *tbf_options(self.bandwidth_mbit))
            self.exec("tc", "qdisc", "add", "dev", inside, "root", "tbf", *tbf_options(self.bandwidth_mbit))
        except NetlabUnavailable:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth[0]], capture_output=True)

    def exec(self, *cmd: str) -> None:
        run("ip", "netns", "exec", self.name, *cmd)

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def tbf_options(mbit: float) -> list[str]:
    """Token bucket: the rate, a burst of ~2 ms at that rate (at least one 9 kB frame), 200 ms queue."""
    burst = max(int(mbit * 1e6 / 8 * 0.002), 9000)
    return ["rate", f"{mbit}mbit", "burst", str(burst), "latency", "200ms"]


@dataclass
class CpuLimit:
    """A cgroup holding its processes to ``share`` of one CPU (1.0: no limit)."""

    name: str
    share: float
    path: Path | None = field(default=None, init=False)

    def __enter__(self) -> CpuLimit:
        if self.share >= 1.0:
            return self
        quota = str(int(CFS_PERIOD_US * self.share))
        if (CGROUP_V2 / "cgroup.controllers").exists():
            self.path = CGROUP_V2 / self.name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        elif CGROUP_V1_CPU.is_dir():
            self.path = CGROUP_V1_CPU / self.name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(quota)
        else:
            raise NetlabUnavailable("no cgroup CPU controller to slow a node down")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            for _ in range(50):  # the cgroup empties once its processes have exited
                with contextlib.suppress(OSError):
                    self.path.rmdir()
                    return
                time.sleep(0.1)

    def prefix(self) -> list[str]:
        """Join the cgroup, then exec the command."""
        if self.path is None:
            return []
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh"]


class DelayProxy:
    """A TCP proxy that delays every chunk by ``delay_s`` in each direction (order kept).

    With ``target=None`` it is transparent: each connection goes on to the address it was sent
    to before iptables redirected it here (``PeerLinks``)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int] | None, delay_s: float) -> None:
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"delay-proxy-{listen[1]}", daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> DelayProxy:
        self.thread.start()
        if not self.ready.wait(10):
            raise NetlabUnavailable(f"delay proxy on {self.listen} did not start")
        if self.server is None:
            raise NetlabUnavailable(f"delay proxy could not listen on {self.listen}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.loop.close()

    async def _close(self) -> None:
        """Stop listening, close every open connection, and end the tasks that piped them."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(asyncio.start_server(self._connect, *self.listen))
        except OSError:
            log.exception("delay proxy cannot listen on %s", self.listen)
        finally:
            self.ready.set()
        if self.server is not None:
            self.loop.run_forever()

    async def _connect(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target = self.target or original_destination(client_w)
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        self.writers.update((client_w, server_w))
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            self.writers.difference_update((client_w, server_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as fast as data comes; write each chunk ``delay_s`` after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(CHUNK):
                queue.put_nowait((self.loop.time() + self.delay_s, chunk))
        queue.put_nowait((self.loop.time() + self.delay_s, b""))
        await sender

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
        writer.close()


def original_destination(writer: asyncio.StreamWriter) -> tuple[str, int]:
    """Where a connection redirected by iptables was headed (SO_ORIGINAL_DST)."""
    raw = writer.get_extra_info("socket").getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


class PeerLinks:
    """Every TCP connection between the namespaces ``nodes`` goes through one transparent
    ``DelayProxy`` on the host (iptables REDIRECT), so peers that connect to each other directly,
    such as the ranks of a gloo all-reduce, see the link's latency; tbf on each namespace's veth
    still limits its bandwidth. Needs iptables with the nat table."""

    def __init__(self, nodes: list[Namespace], delay_s: float) -> None:
        self.nodes = nodes
        self.delay_s = delay_s
        self.port = 0
        self.rules: list[list[str]] = []
        self.proxy: DelayProxy | None = None

    def __enter__(self) -> PeerLinks:
        if shutil.which("iptables") is None:
            raise NetlabUnavailable("iptables is not installed (apt-get install iptables)")
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            self.port = s.getsockname()[1]
        self.proxy = DelayProxy(("0.0.0.0", self.port), None, self.delay_s).__enter__()
        try:
            for node in self.nodes:
                node.exec("ip", "route", "add", "10.77.0.0/16", "via", node.host_ip)
                rule = [
                    "PREROUTING",
                    "-p",
                    "tcp",
                    "-d",
                    node.ns_ip,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    str(self.port),
                ]
                run("iptables", "-t", "nat", "-A", *rule)
                self.rules.append(rule)
        except NetlabUnavailable:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for rule in self.rules:
            subprocess.run(["iptables", "-t", "nat", "-D", *rule], capture_output=True)
        if self.proxy is not None:
            self.proxy.__exit__()


@dataclass(frozen=True)
class LinkSpec:
    latency_ms: float
    bandwidth_mbit: float
    cpu_share: float = 1.0


@contextlib.contextmanager
def emulated_node(
    name: str, index: int, link: LinkSpec, hub: tuple[str, int], proxy_port: int
) -> Iterator[tuple[list[str], str]]:
    """A namespace, link and CPU limit for one node; yields (command prefix, hub URL from inside)."""
    with (
        Namespace(f"tessera-{name}", index, link.bandwidth_mbit) as ns,
        DelayProxy((ns.host_ip, proxy_port), hub, link.latency_ms / 1000) as _,
        CpuLimit(f"tessera-{name}", link.cpu_share) as cpu,
    ):
        yield [*cpu.prefix(), *ns.prefix()], f"http://{ns.host_ip}:{proxy_port}"
