"""Network emulation: a namespace behind a tbf-limited veth and a delaying proxy.

Only lower bounds on time are asserted (a loaded machine can be slower, never faster than
the emulated link); skipped where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tessera.testing.cluster import free_port
from tessera.testing.netlab import (
    CpuLimit,
    DelayProxy,
    LinkSpec,
    Namespace,
    NetlabUnavailable,
    PeerLinks,
    check_available,
    emulated_node,
)

pytestmark = pytest.mark.timeout(120)
PAYLOAD = 1_000_000


def netlab_or_skip() -> None:
    try:
        check_available()
    except (NetlabUnavailable, OSError) as exc:
        pytest.skip(f"network emulation unavailable here: {exc}")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = bytes(PAYLOAD if self.path == "/big" else 1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


SERVE = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = bytes(int(sys.argv[2]) if self.path == "/big" else 1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
httpd = HTTPServer((sys.argv[1], 0), Handler)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""

GET = "import sys, time, urllib.request as r; s = time.perf_counter(); r.urlopen(sys.argv[1]).read(); print(time.perf_counter() - s)"  # noqa: E501


def timed_get(prefix: list[str], url: str) -> float:
    """Seconds for one GET (connect, request, whole response) from inside the namespace."""
    cmd = [*prefix, sys.executable, "-c", GET, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_emulated_link_adds_latency_and_limits_bandwidth(server: tuple[str, int]) -> None:
    netlab_or_skip()
    with emulated_node("t-link", 240, LinkSpec(latency_ms=50, bandwidth_mbit=8), server, free_port()) as (
        prefix,
        url,
    ):
        assert timed_get(prefix, f"{url}/small") >= 0.1  # one request: 2 x 50 ms
        assert timed_get(prefix, f"{url}/big") >= 0.1 + 0.8 * PAYLOAD * 8 / 8e6  # 1 MB at 8 Mbit/s: 1 s


def test_peer_links_delay_connections_between_namespaces() -> None:
    """A server in one namespace, a client in another: their direct connection is redirected
    through the transparent delaying proxy and limited by both veths' tbf."""
    netlab_or_skip()
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    with (
        Namespace("tessera-t-peer-a", 241, 8) as a,
        Namespace("tessera-t-peer-b", 242, 8) as b,
        PeerLinks([a, b], 0.05),
    ):
        serve = [*a.prefix(), sys.executable, "-c", SERVE, a.ns_ip, str(PAYLOAD)]
        with subprocess.Popen(serve, stdout=subprocess.PIPE, text=True) as httpd:
            try:
                port = int(httpd.stdout.readline())  # type: ignore[union-attr]
                assert timed_get(b.prefix(), f"http://{a.ns_ip}:{port}/small") >= 0.1  # 2 x 50 ms
                big = timed_get(b.prefix(), f"http://{a.ns_ip}:{port}/big")
                assert big >= 0.1 + 0.8 * PAYLOAD * 8 / 8e6  # 1 MB at 8 Mbit/s: 1 s
            finally:
                httpd.terminate()
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert a.ns_ip not in rules and b.ns_ip not in rules  # PeerLinks removed its rules


def test_delay_proxy_keeps_bytes_and_order(server: tuple[str, int]) -> None:
    with DelayProxy(("127.0.0.1", free_port()), server, 0.02) as proxy:
        import httpx

        start = time.perf_counter()
        response = httpx.get(f"http://127.0.0.1:{proxy.listen[1]}/big", timeout=10)
        assert response.content == bytes(PAYLOAD)
        assert time.perf_counter() - start >= 0.04


def test_cpu_limit_slows_a_process_down() -> None:
    netlab_or_skip()
    spin = "import time; t=time.process_time(); s=time.perf_counter()\nwhile time.process_time()-t<0.3: pass\nprint(time.perf_counter()-s)"  # noqa: E501
    with CpuLimit("tessera-test-cpu", 0.25) as cpu:
        if cpu.path is None:
            pytest.skip("no cgroup CPU controller")
        done = subprocess.run(
            [*cpu.prefix(), sys.executable, "-c", spin], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert (
        float(done.stdout) >= 0.3 / 0.25 * 0.8
    )  # 0.3 s of CPU at a quarter of a CPU: >= ~1.2 s of wall time
