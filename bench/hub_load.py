"""Load on one hub process: many simulated workers lease and upload small contributions.

For each round size N (default 10, 100, 1000) a fresh `tessera hub` process (SQLite) serves a
run with quorum N; N simulated workers (asyncio + httpx, up to --concurrency requests in
flight) each register, lease and upload one small contribution, which closes the round. The
hub's requests per second, p50 and p99 latency (lease and upload requests), and its peak
resident memory (VmHWM) are reported per N. Contributions are written to disk as they arrive
and averaged one at a time at the close, so the hub's memory should not grow with N.

    python bench/hub_load.py --json bench/results/hub_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from tessera.api.messages import ContributionMeta
from tessera.api.protocol import META_HEADER
from tessera.core.tensors import from_bytes, to_bytes
from tessera.testing.cluster import free_port, start_hub

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """
[run]
name = "load"
rounds = 1
quorum = {quorum}
round_deadline_s = 3600

[model]
options = {{ context = 16, d_model = 16, n_layers = 1, n_heads = 2 }}

[data]
options = {{ context = 16, num_shards = 4 }}

[eval]
batch_size = 4
batches = 2
"""


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


async def one_worker(
    client: httpx.AsyncClient, run: str, body: bytes, gate: asyncio.Semaphore, latencies: list[float]
) -> None:
    async with gate:
        r = await client.post(f"/v1/runs/{run}/workers", json={"name": "sim"})
        worker_id = r.raise_for_status().json()["worker_id"]
        start = time.perf_counter()
        r = await client.post(f"/v1/runs/{run}/leases", json={"worker_id": worker_id})
        latencies.append(time.perf_counter() - start)
        lease = r.raise_for_status().json()["lease"]
        meta = ContributionMeta(
            contribution_id=lease["lease_id"],
            lease_id=lease["lease_id"],
            worker_id=worker_id,
            tokens=64,
            steps=1,
            train_loss=1.0,
            compute_s=0.0,
        )
        start = time.perf_counter()
        r = await client.post(
            f"/v1/runs/{run}/contributions",
            content=body,
            headers={META_HEADER: meta.model_dump_json()},
        )
        latencies.append(time.perf_counter() - start)
        if r.raise_for_status().json()["status"] != "accepted":
            raise RuntimeError(f"contribution refused: {r.text}")


async def load_round(url: str, token: str, workers: int, concurrency: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300, limits=limits) as client:
        run = (await client.post("/v1/runs", content=RECIPE.format(quorum=workers).encode())).json()["run_id"]
        sha = (await client.get(f"/v1/runs/{run}/versions/0")).json()["blob_sha256"]
        params = from_bytes((await client.get(f"/v1/runs/{run}/blobs/{sha}")).content)
        body = to_bytes({k: torch.randn(v.shape) * 1e-3 for k, v in params.items() if v.is_floating_point()})
        latencies: list[float] = []
        gate = asyncio.Semaphore(concurrency)
        start = time.perf_counter()
        await asyncio.gather(*(one_worker(client, run, body, gate, latencies) for _ in range(workers)))
        elapsed = time.perf_counter() - start
        status = (await client.get(f"/v1/runs/{run}")).json()
        if status["status"] != "finished":
            raise RuntimeError(f"the round did not close: {status['status']}")
    ordered = sorted(latencies)
    return {
        "requests_per_s": 3 * workers / elapsed,  # register + lease + upload per worker
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "contribution_bytes": len(body),
        "wall_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    per_size, peak = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            home, port = Path(tmp) / f"hub-{n}", free_port()
            hub = start_hub(home, port)
            try:
                token = (home / "admin.token").read_text().strip()
                per_size[str(n)] = asyncio.run(
                    load_round(f"http://127.0.0.1:{port}", token, n, args.concurrency)
                )
                peak[str(n)] = peak_rss_mb(hub.pid)
            finally:
                hub.terminate()
                hub.wait(timeout=30)
            print(n, per_size[str(n)], f"peak {peak[str(n)]:.0f} MB", flush=True)
    largest = per_size[str(max(args.workers))]
    output = {
        "workers": max(args.workers),
        "requests_per_s": largest["requests_per_s"],
        "p50_ms": largest["p50_ms"],
        "p99_ms": largest["p99_ms"],
        "peak_rss_mb": peak,
        "per_round_size": per_size,
        "concurrency": args.concurrency,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": 2},
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    print(
        json.dumps({k: output[k] for k in ("workers", "requests_per_s", "p50_ms", "p99_ms", "peak_rss_mb")})
    )


if __name__ == "__main__":
    main()
