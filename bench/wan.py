"""Slow links: how much of the time do tessera's workers compute, and how soon does a run reach
the loss that per-step data parallel reaches?

For each emulated link (100 Mbit/s with 100 ms, 10 Mbit/s with 300 ms one-way latency), a real
`tessera hub` runs the reference task with 4 workers, each in its own network namespace (veth
limited by tc tbf both ways, latency from a delaying proxy; tessera/netlab.py), once with
overlapped rounds and once without. Per run: utilization (each worker's inner-step time over
its wall time, from `tessera worker --json`, mean of the 4) and the time from the first round's
start until the hub's held-out loss first reaches the target.

The target is the held-out loss that per-step data parallel (4 workers, gradients averaged every
step, same batch) reaches after --dp-steps steps, trained here in one process (the loss curve
does not depend on the link). Its time on each link is measured: 4 DDP ranks on gloo, one per
namespace, every connection between them through the link's bandwidth (tbf) and latency (a
transparent delaying proxy, netlab.PeerLinks), run for --dp-link-steps steps; time to target is
--dp-steps times the measured mean step. The cost model's prediction for the same steps is
written beside it.

Needs root (namespaces, tc, iptables).

    python bench/wan.py --json bench/results/wan.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from communication import DataParallel

from tessera.api.client import HubClient
from tessera.core.tensors import to_bytes
from tessera.demo import DemoSettings, demo_recipe
from tessera.plan.cost import ring_allreduce_s
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, configure_torch, load_data
from tessera.testing.cluster import ROOT, free_port, start_hub, start_worker, wait_workers
from tessera.testing.netlab import LinkSpec, Namespace, PeerLinks, check_available, emulated_node
from tessera.worker.probe import measure_step

WORKERS = 4


@dataclass(frozen=True)
class Wan:
    name: str
    mbit: float
    latency_ms: float


LINKS = (Wan("100mbit-100ms", 100, 100), Wan("10mbit-300ms", 10, 300))


def recipe_text(rounds: int, inner_steps: int, codec: str, overlap: bool) -> str:
    text = demo_recipe(DemoSettings(workers=WORKERS, rounds=rounds, inner_steps=inner_steps))
    flag = "true" if overlap else "false"
    return f'{text}\n[communication]\ncodec = "{codec}"\ndownload_codec = "{codec}"\noverlap = {flag}\n'


def data_parallel_curve(recipe: Recipe, steps: int, every: int) -> list[tuple[int, float]]:
    """Held-out loss of per-step data parallel (4 workers' gradients averaged) every ``every`` steps."""
    data = load_data(recipe)
    val = data.validation_batches(recipe.eval.batch_size, recipe.eval.batches)
    shards = [
        data.train_batches(s, recipe.train.batch_size, seed=i) for i, s in enumerate(data.shard_names())
    ]
    dp = DataParallel(recipe, shards)
    curve = []
    for step in range(1, steps + 1):
        dp.step()
        if step % every == 0:
            curve.append((step, dp.val_loss(val)))
    return curve


def dp_time_modelled(step_s: float, steps: int, grad_bytes: int, link: Wan) -> float:
    allreduce = ring_allreduce_s(grad_bytes, WORKERS, link.mbit * 1e6 / 8, link.latency_ms / 1000)
    return steps * (step_s + allreduce)


def dp_step_on_link(link: Wan, text: str, steps: int, work: Path, index: int) -> float:
    """Mean wall time of one data-parallel step (4 DDP ranks on gloo, each in its own namespace,
    every connection between them through the link's latency and bandwidth)."""
    recipe, report = work / "dp.toml", work / "dp.json"
    recipe.write_text(text)
    with ExitStack() as stack:
        nodes = [
            stack.enter_context(Namespace(f"tessera-dp{i}", index + i, link.mbit)) for i in range(WORKERS)
        ]
        stack.enter_context(PeerLinks(nodes, link.latency_ms / 1000))
        master = f"{nodes[0].ns_ip}:{free_port()}"
        procs = []
        for rank, node in enumerate(nodes):
            cmd = [*node.prefix(), "env", f"GLOO_SOCKET_IFNAME={node.veth[1]}", sys.executable,
                   str(ROOT / "bench" / "dp_rank.py"), "--recipe", str(recipe), "--rank", str(rank),
                   "--world", str(WORKERS), "--master", master, "--steps", str(steps),
                   "--json", str(report)]  # fmt: skip
            log = stack.enter_context((work / f"dp{rank}.log").open("w"))
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        wait_workers(procs, 3600, work, "a data-parallel rank")
    return float(json.loads(report.read_text())["step_s"])


def run_tessera(link: Wan, text: str, target: float, work: Path, index: int) -> dict[str, object]:
    """A hub and 4 emulated workers: mean utilization, bytes, time to the target loss."""
    port = free_port()
    hub = start_hub(work / "hub", port)
    try:
        token = (work / "hub" / "admin.token").read_text().strip()
        with HubClient.connect(f"http://127.0.0.1:{port}", token) as client, ExitStack() as stack:
            run_id = client.create_run(text).run_id
            procs, reports = [], []
            for i in range(WORKERS):
                spec = LinkSpec(link.latency_ms, link.mbit)
                prefix, url = stack.enter_context(
                    emulated_node(f"wan{i}", 10 * index + i, spec, ("127.0.0.1", port), free_port())
                )
                report = work / f"w{i}.json"
                hub_at = (url, token, run_id)
                procs.append(
                    start_worker(
                        hub_at,
                        work / f"w{i}",
                        "--json",
                        str(report),
                        name=f"w{i}",
                        log=work / f"w{i}.log",
                        prefix=prefix,
                    )
                )
                reports.append(report)
            wait_workers(procs, 3600, work)
            summaries = [json.loads(r.read_text()) for r in reports]
            started = max(s["started_at"] for s in summaries)
            return {
                "utilization": statistics.mean(s["utilization"] for s in summaries),
                "bytes_up_per_worker": statistics.mean(s["bytes_up"] for s in summaries),
                "time_to_target_s": time_to_target(client, run_id, started, target),
                "final_val_loss": client.rounds(run_id)[-1].val_loss,
            }
    finally:
        hub.terminate()
        hub.wait(timeout=30)


def time_to_target(client: HubClient, run_id: str, started_at: float, target: float) -> float | None:
    """Seconds from when the last of the workers began to work until the hub wrote the first
    version with held-out loss at or below ``target`` (one clock: the same machine)."""
    for r in client.rounds(run_id):
        if r.val_loss is not None and r.val_loss <= target:
            return client.version(run_id, r.number + 1).created_at - started_at
    return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--codec", default="int8")
    parser.add_argument("--dp-steps", type=int, default=200)
    parser.add_argument("--dp-link-steps", type=int, default=30, help="data-parallel steps timed per link")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "wan.json")
    args = parser.parse_args()
    check_available()
    configure_torch(1)
    base_text = recipe_text(args.rounds, args.inner_steps, args.codec, False)
    base = parse_recipe(base_text)
    curve = data_parallel_curve(base, args.dp_steps, max(1, args.dp_steps // 10))
    target = curve[-1][1]
    step = measure_step(base, flops=1.0, steps=10).step_s  # one DP rank's compute per step, one thread
    grad_bytes = len(to_bytes({n: p.detach() for n, p in build_model(base).named_parameters()}))
    print(f"data parallel: {args.dp_steps} steps to {target:.4f}; step {step * 1000:.1f} ms", flush=True)
    rows = []
    for index, link in enumerate(LINKS):
        row: dict[str, object] = {"name": link.name, "mbit_s": link.mbit, "latency_ms": link.latency_ms}
        for overlap in (True, False):
            key = "overlap" if overlap else "no_overlap"
            with tempfile.TemporaryDirectory() as tmp:
                text = recipe_text(args.rounds, args.inner_steps, args.codec, overlap)
                measured = run_tessera(link, text, target, Path(tmp), 2 * index + overlap + 1)
            row.update({f"{name}_{key}": value for name, value in measured.items()})
            print(link.name, key, json.dumps(measured), flush=True)
        row["time_to_target_s"] = row["time_to_target_s_overlap"]
        with tempfile.TemporaryDirectory() as tmp:
            dp_step = dp_step_on_link(link, base_text, args.dp_link_steps, Path(tmp), 100 + 10 * index)
        row["baseline_step_s"] = dp_step
        row["baseline_time_to_target_s"] = args.dp_steps * dp_step
        row["baseline_time_to_target_modelled_s"] = dp_time_modelled(step, args.dp_steps, grad_bytes, link)
        print(
            link.name,
            "data parallel",
            json.dumps({k: v for k, v in row.items() if "baseline" in k}),
            flush=True,
        )
        rows.append(row)
    result = {
        "command": "python bench/wan.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, 2 cores; 4 workers and the hub share them",
        "settings": {
            "rounds": args.rounds,
            "inner_steps": args.inner_steps,
            "codec": args.codec,
            "workers": WORKERS,
        },
        "data_parallel": {
            "steps": args.dp_steps,
            "target_val_loss": target,
            "curve": curve,
            "step_s": step,
            "grad_bytes": grad_bytes,
            "link_steps": args.dp_link_steps,
            "time_on_link": "dp steps x mean step of 4 gloo DDP ranks measured over the emulated link",
        },
        "links": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
