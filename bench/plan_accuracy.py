"""How well does the planner predict round time? Plan, then run for real on emulated networks.

For each topology, two workers run in their own network namespaces (veth pairs limited by tc
tbf, latency added by a delaying proxy, slower nodes held to a share of a CPU by a cgroup
quota) against a real `tessera hub` process. The plan's per-worker inner steps go into the
run's recipe. The planner is calibrated the way a user would do it with `tessera probe
--recipe`: matmul FLOP/s and one training step's time on this machine (one thread), which give
every node's FLOP/s (times its CPU share) and the efficiency. The measured round time is the
hub's mean wall time of rounds 1..N-1 (round 0 includes the workers' start-up).

Needs root (namespaces, tc, cgroups).

    python bench/plan_accuracy.py --json bench/results/plan_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from tessera.api.client import HubClient
from tessera.cli.plan import workload
from tessera.plan.planner import Plan, PlanSettings, make_plan
from tessera.plan.profile import profile_recipe
from tessera.plan.topology import parse_topology
from tessera.recipe import load_recipe, parse_recipe, with_plan
from tessera.task import configure_torch
from tessera.testing.cluster import free_port, start_hub, start_worker, wait_workers
from tessera.testing.netlab import LinkSpec, check_available, emulated_node
from tessera.worker.probe import matmul_flops, measure_step

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "stdlib_lm.toml"


@dataclass(frozen=True)
class BenchTopology:
    name: str
    links: tuple[LinkSpec, ...]


TOPOLOGIES = (
    BenchTopology("lan", (LinkSpec(1, 200), LinkSpec(1, 200))),
    BenchTopology("home-uplinks-mixed-speed", (LinkSpec(20, 20), LinkSpec(40, 10, cpu_share=0.5))),
    BenchTopology("intercontinental", (LinkSpec(100, 10), LinkSpec(150, 8))),
    BenchTopology("slow-and-fast", (LinkSpec(10, 50, cpu_share=0.35), LinkSpec(60, 20))),
)


def topology_toml(bench: BenchTopology, node_flops: float, hub_flops: float) -> str:
    lines = [f'name = "{bench.name}"', "[hub]", f"flops = {hub_flops}", "[[group]]", 'name = "hub-site"']
    for i, link in enumerate(bench.links):
        lines += [
            "[[node]]",
            f'name = "w{i}"',
            'group = "hub-site"',
            'device = "cpu-1-thread"',
            f"flops = {node_flops * link.cpu_share}",
            "memory_gb = 4",
            f"link = {{ latency_ms = {link.latency_ms}, bandwidth_mbit = {link.bandwidth_mbit} }}",
        ]
    return "\n".join(lines) + "\n"


def bench_recipe(rounds: int, quorum: int) -> str:
    text = RECIPE.read_text()
    text = text.replace("rounds = 12", f"rounds = {rounds}").replace("quorum = 4", f"quorum = {quorum}")
    parse_recipe(text)
    return text


def run_for_real(bench: BenchTopology, plan: Plan, rounds: int, work: Path, index: int) -> list[float]:
    """Hub plus one emulated node per DiLoCo unit of the plan; returns the hub's round wall times."""
    planned = plan.worker_inner_steps
    recipe_text = with_plan(bench_recipe(rounds, len(planned)), bench.name, planned, plan.wire_format)
    port = free_port()
    hub = start_hub(work / "hub", port)
    try:
        token = (work / "hub" / "admin.token").read_text().strip()
        with HubClient.connect(f"http://127.0.0.1:{port}", token) as client:
            run_id = client.create_run(recipe_text).run_id
            with ExitStack() as stack:
                workers = []
                for i, link in enumerate(bench.links):
                    if f"w{i}" not in planned:  # the plan trains it apart (a module): not in this run
                        continue
                    node = emulated_node(f"w{i}", 10 * index + i, link, ("127.0.0.1", port), free_port())
                    prefix, url = stack.enter_context(node)
                    workers.append(
                        start_worker(
                            (url, token, run_id),
                            work / f"w{i}",
                            name=f"w{i}",
                            log=work / f"w{i}.log",
                            prefix=prefix,
                        )
                    )
                wait_workers(workers, 1800, work)
            return [r.wall_s for r in client.rounds(run_id) if r.wall_s is not None]
    finally:
        hub.terminate()
        hub.wait(timeout=30)


def predict(bench: BenchTopology, calibration: dict[str, float], rounds: int, settings: PlanSettings) -> Plan:
    text = topology_toml(bench, calibration["matmul_flops"], calibration["matmul_flops"])
    recipe = parse_recipe(bench_recipe(rounds, len(bench.links)))
    profile = profile_recipe(recipe)
    return make_plan(parse_topology(text), profile, workload(recipe, profile), settings)


def calibrate() -> dict[str, float]:
    """What `tessera probe --recipe` measures, at one thread as every worker runs."""
    flops = matmul_flops(torch.device("cpu"))
    step = measure_step(load_recipe(RECIPE), flops, steps=10)
    return {"matmul_flops": flops, "step_s": step.step_s, "efficiency": step.efficiency}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.8)
    parser.add_argument("--max-inner-steps", type=int, default=150)
    parser.add_argument("--only", help="run only the topology with this name")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "plan_accuracy.json")
    args = parser.parse_args()
    check_available()
    configure_torch(1)  # as `tessera worker --threads 1` does
    calibration = calibrate()
    print(f"calibration: {calibration}")
    settings = PlanSettings(
        target_utilization=args.target,
        efficiency=calibration["efficiency"],
        max_inner_steps=args.max_inner_steps,
    )
    rows = []
    for index, bench in enumerate(TOPOLOGIES):
        if args.only and bench.name != args.only:
            continue
        plan = predict(bench, calibration, args.rounds, settings)
        with tempfile.TemporaryDirectory() as tmp:
            walls = run_for_real(bench, plan, args.rounds, Path(tmp), index + 1)
        measured = statistics.mean(walls[1:])
        row = {
            "name": bench.name,
            "links": [link.__dict__ for link in bench.links],
            "inner_steps": plan.worker_inner_steps,
            "wire_format": plan.wire_format,
            "strategies": {u.name: u.strategy for u in plan.units},
            "predicted_round_s": plan.round_s,
            "measured_round_s": measured,
            "measured_rounds_s": walls,
            "abs_error": abs(plan.round_s - measured) / measured,
        }
        print(json.dumps(row))
        rows.append(row)
    result = {
        "command": "python bench/plan_accuracy.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, one torch thread per process",
        "recipe": str(RECIPE.relative_to(ROOT)),
        "calibration": calibration,
        "measured": "mean hub wall time of rounds 1..N-1 (round 0 includes start-up)",
        "topologies": rows,
        "mean_abs_error": statistics.mean(r["abs_error"] for r in rows),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"mean absolute error {result['mean_abs_error']:.1%}; written to {args.json}")


if __name__ == "__main__":
    main()
