"""Load on one hub process, side by side with another checkout's hub (``--baseline``).

Small contributions: for each round size N (default 10, 100, 1000) a fresh `tessera hub` process
(SQLite) serves a run with quorum N; N simulated workers (asyncio + httpx, up to --concurrency
requests in flight) each register, lease and upload one small contribution (48 KB), which makes
the round due. Reported per N: requests per second (register + lease + upload), p50 and p99
latency of the lease and upload requests, and the hub's peak resident memory (VmHWM).

1M-parameter contributions (int8 both ways): rounds of 25 and 100 uploads of a 1.05M-parameter
model; contributions per second while they upload, the hub's peak memory per round size (it
should not grow with the number of contributions: at most ``limits.max_assessing`` are decoded
at once, they are written to disk as they arrive and averaged one at a time), and the latency of
the lease requests that 8 probing workers send, each every 250 ms after its last answer (4 on
the closing run, 4 on another run; a worker polling four times a second is already far more
than a real one, which leases once a round; each has leased once before): for 3 s before the
last upload (nothing closes),
then while the round closes (aggregation, outer step, writing the version, evaluation on 16
held-out batches).

Each case runs on this checkout's hub and then on the baseline's (same machine, same settings,
same client), so the ratio is measured in one run; ``--repeat`` times, alternating, and each
figure reported is the median of its repeats (every repeat's figures are kept under ``runs``).

    git worktree add /tmp/tessera-baseline <commit>
    python bench/hub_load.py --baseline /tmp/tessera-baseline --json bench/results/hub_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import httpx
import torch

from tessera.api.messages import ContributionMeta
from tessera.api.protocol import META_HEADER
from tessera.core.codecs import codec
from tessera.core.tensors import from_bytes, to_bytes
from tessera.testing.cluster import ROOT, free_port, start_hub

SMALL = """
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
LARGE = """
[run]
name = "load-1m"
rounds = 2
quorum = {quorum}
round_deadline_s = 3600

[model]
options = {{ context = 64, d_model = 128, n_layers = 5, n_heads = 4 }}

[data]
options = {{ context = 64, num_shards = 4 }}

[communication]
codec = "int8"
download_codec = "int8"

[eval]
batch_size = 16
batches = 16
"""
PROBERS = 4  # lease-sending workers per run while a round closes
PROBE_EVERY_S = 0.25  # each sends a lease request, waits for the answer, then this long
IDLE_PROBE_S = 3.0  # probing before the last upload, while nothing closes


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Hub:
    """A `tessera hub` process of a checkout, on a fresh home and port."""

    def __init__(self, checkout: Path, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_hub(home, self.port, cwd=checkout, env={"PYTHONPATH": str(checkout)})
        self.token = (home / "admin.token").read_text().strip()

    def close(self) -> float:
        """Stop the hub; its peak resident memory in MB."""
        peak = peak_rss_mb(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return peak


async def create_run(client: httpx.AsyncClient, recipe: str) -> tuple[str, dict[str, torch.Tensor]]:
    run = (await client.post("/v1/runs", content=recipe.encode())).raise_for_status().json()["run_id"]
    sha = (await client.get(f"/v1/runs/{run}/versions/0")).json()["blob_sha256"]
    params = from_bytes((await client.get(f"/v1/runs/{run}/blobs/{sha}")).content)
    return run, {k: v for k, v in params.items() if v.is_floating_point()}


async def register(client: httpx.AsyncClient, run: str) -> str:
    r = await client.post(f"/v1/runs/{run}/workers", json={"name": "sim"})
    return str(r.raise_for_status().json()["worker_id"])


async def timed(latencies: list[float], call: asyncio.Future[httpx.Response] | object) -> httpx.Response:
    start = time.perf_counter()
    response = await call  # type: ignore[misc]
    latencies.append(time.perf_counter() - start)
    return response.raise_for_status()  # type: ignore[no-any-return]


async def lease_and_upload(
    client: httpx.AsyncClient, run: str, worker_id: str, body: bytes, codec_name: str, latencies: list[float]
) -> None:
    r = await timed(latencies, client.post(f"/v1/runs/{run}/leases", json={"worker_id": worker_id}))
    lease = r.json()["lease"]
    meta = ContributionMeta(
        contribution_id=lease["lease_id"],
        lease_id=lease["lease_id"],
        worker_id=worker_id,
        tokens=64,
        steps=1,
        train_loss=1.0,
        compute_s=0.0,
        codec=codec_name,
    )
    path, headers = f"/v1/runs/{run}/contributions", {META_HEADER: meta.model_dump_json()}
    r = await timed(latencies, client.post(path, content=body, headers=headers))
    if r.json()["status"] != "accepted":
        raise RuntimeError(f"contribution refused: {r.text}")


async def wait_closed(client: httpx.AsyncClient, run: str, rounds_done: int, timeout_s: float = 600) -> None:
    """Until the run has ``rounds_done`` versions after 0 (the old hub closes inside the last
    upload; this one after answering it)."""
    deadline = time.monotonic() + timeout_s
    while (await client.get(f"/v1/runs/{run}")).json()["rounds_done"] < rounds_done:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run} did not close round {rounds_done - 1}")
        await asyncio.sleep(0.01)


def client_for(hub: Hub, concurrency: int) -> httpx.AsyncClient:
    # idle connections expire before the hub's keep-alive timeout (uvicorn's 5 s) closes them, so
    # no request goes out on a connection the hub is closing
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0)
    headers = {"Authorization": f"Bearer {hub.token}"}
    return httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=600, limits=limits)


async def small_round(hub: Hub, workers: int, concurrency: int) -> dict[str, float]:
    async with client_for(hub, concurrency) as client:
        run, params = await create_run(client, SMALL.format(quorum=workers))
        body = to_bytes({k: torch.randn(v.shape) * 1e-3 for k, v in params.items()})
        latencies: list[float] = []
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await lease_and_upload(client, run, await register(client, run), body, "fp32", latencies)

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(workers)))
        elapsed = time.perf_counter() - start
        await wait_closed(client, run, 1)
    return {
        "requests_per_s": 3 * workers / elapsed,  # register + lease + upload per worker
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "contribution_bytes": len(body),
        "wall_s": elapsed,
    }


async def probe_leases(
    client: httpx.AsyncClient, targets: list[tuple[str, str]], stop: asyncio.Event
) -> list[float]:
    """Lease requests (no waiting) from each (run, worker) in turn until ``stop``; their latencies."""
    latencies: list[float] = []

    async def keep_asking(run: str, worker_id: str) -> None:
        while not stop.is_set():
            await timed(latencies, client.post(f"/v1/runs/{run}/leases", json={"worker_id": worker_id}))
            await asyncio.sleep(PROBE_EVERY_S)

    await asyncio.gather(*(keep_asking(run, worker) for run, worker in targets))
    return latencies


async def probe_once(client: httpx.AsyncClient, targets: list[tuple[str, str]]) -> None:
    await asyncio.gather(
        *(client.post(f"/v1/runs/{run}/leases", json={"worker_id": worker}) for run, worker in targets)
    )


async def large_round(hub: Hub, workers: int, concurrency: int) -> dict[str, float]:
    """One round of ``workers`` 1M-parameter int8 uploads, then its close with probing leases."""
    async with client_for(hub, concurrency) as client:
        run, params = await create_run(client, LARGE.format(quorum=workers))
        other, _ = await create_run(client, LARGE.format(quorum=workers))
        wire = codec("int8").encode({k: torch.randn(v.shape) * 1e-3 for k, v in params.items()})
        body = to_bytes(wire)
        uploaders = [await register(client, run) for _ in range(workers)]
        probers = [(run, await register(client, run)) for _ in range(PROBERS)]
        probers += [(other, await register(client, other)) for _ in range(PROBERS)]
        gate, latencies = asyncio.Semaphore(concurrency), []

        async def one(worker_id: str) -> None:
            async with gate:
                await lease_and_upload(client, run, worker_id, body, "int8", latencies)

        start = time.perf_counter()
        await asyncio.gather(*(one(w) for w in uploaders[:-1]))
        uploading = time.perf_counter() - start
        await probe_once(client, probers)  # each prober holds its lease: what follows is polling
        stop = asyncio.Event()
        probing = asyncio.create_task(probe_leases(client, probers, stop))
        await asyncio.sleep(IDLE_PROBE_S)  # the probers' own load, with no round closing
        stop.set()
        idle = await probing
        stop = asyncio.Event()
        probing = asyncio.create_task(probe_leases(client, probers, stop))
        closing = time.perf_counter()
        await one(uploaders[-1])  # the round is due: it closes
        await wait_closed(client, run, 1)
        closed = time.perf_counter() - closing
        stop.set()
        during = await probing
    return {
        "contributions_per_s": (workers - 1) / uploading,
        "probers": 2 * PROBERS,
        "probe_every_s": PROBE_EVERY_S,
        "contribution_bytes": len(body),
        "close_s": closed,
        "lease_requests_idle": len(idle),
        "lease_p50_idle_ms": 1000 * statistics.median(idle),
        "lease_p99_idle_ms": 1000 * percentile(idle, 0.99),
        "lease_requests_during_close": len(during),
        "lease_p50_during_close_ms": 1000 * statistics.median(during),
        "lease_p99_during_close_ms": 1000 * percentile(during, 0.99),
    }


def run_case(checkout: Path, tmp: Path, name: str, case: object) -> tuple[dict[str, float], float]:
    hub = Hub(checkout, tmp / name)
    try:
        result = asyncio.run(case(hub))  # type: ignore[operator]
    finally:
        peak = hub.close()
    print(name, json.dumps(result), f"peak {peak:.0f} MB", flush=True)
    return result, peak


def medians(runs: list[dict[str, float]]) -> dict[str, object]:
    """Each figure's median over the repeats of a case, and the repeats themselves."""
    return {**{k: statistics.median(r[k] for r in runs) for k in runs[0]}, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--large", type=int, nargs="+", default=[25, 100], help="1M-parameter round sizes")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--baseline", type=Path, required=True, help="a checkout of the commit to compare with"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case on each checkout")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    checkouts = {"current": ROOT, "baseline": args.baseline.resolve()}
    results: dict[str, dict[str, dict[str, object]]] = {k: {"small": {}, "large": {}} for k in checkouts}
    cases = [
        ("small", n, partial(small_round, workers=n, concurrency=args.concurrency)) for n in args.workers
    ]
    cases += [("large", n, partial(large_round, workers=n, concurrency=args.concurrency)) for n in args.large]
    with tempfile.TemporaryDirectory() as tmp:
        for kind, n, case in cases:
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in checkouts}
            for i in range(args.repeat):
                for label, checkout in checkouts.items():  # side by side, size by size, alternating
                    result, peak = run_case(checkout, Path(tmp), f"{label}-{kind}-{n}-{i}", case)
                    runs[label].append({**result, "peak_rss_mb": peak})
            for label in checkouts:
                results[label][kind][str(n)] = medians(runs[label])
    current, baseline = results["current"], results["baseline"]
    largest, biggest = str(max(args.workers)), str(max(args.large))
    small, large = current["small"][largest], current["large"][biggest]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.baseline, capture_output=True, text=True)
    output = {
        "workers": max(args.workers),
        "requests_per_s": small["requests_per_s"],
        "baseline_requests_per_s": baseline["small"][largest]["requests_per_s"],
        "p50_ms": small["p50_ms"],
        "p99_ms": small["p99_ms"],
        "peak_rss_mb": {n: r["peak_rss_mb"] for n, r in current["small"].items()},
        "per_round_size": current["small"],
        "lease_p99_during_close_ms": large["lease_p99_during_close_ms"],
        "baseline_lease_p99_during_close_ms": baseline["large"][biggest]["lease_p99_during_close_ms"],
        "lease_p99_idle_ms": large["lease_p99_idle_ms"],
        "baseline_lease_p99_idle_ms": baseline["large"][biggest]["lease_p99_idle_ms"],
        "contributions_per_s_1m": large["contributions_per_s"],
        "baseline_contributions_per_s_1m": baseline["large"][biggest]["contributions_per_s"],
        "peak_rss_mb_1m": {n: r["peak_rss_mb"] for n, r in current["large"].items()},
        "large_per_round_size": current["large"],
        "baseline": {**baseline, "commit": commit.stdout.strip()},
        "concurrency": args.concurrency,
        "repeats": args.repeat,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": 2},
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    keys = ("requests_per_s", "baseline_requests_per_s", "lease_p99_during_close_ms",
            "baseline_lease_p99_during_close_ms", "lease_p99_idle_ms", "contributions_per_s_1m",
            "baseline_contributions_per_s_1m", "peak_rss_mb_1m")  # fmt: skip
    print(json.dumps({k: output[k] for k in keys}))


if __name__ == "__main__":
    main()
