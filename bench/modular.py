"""Modules against one dense model: per-domain held-out loss at equal compute, and bytes per worker.

Four standard-library domains, one worker (node) per domain, a real `tessera hub` and
`tessera worker` processes:
- dense: the reference modular LM with no experts (the trunk's architecture), trained with DiLoCo
  by the 4 workers for --rounds rounds of H inner steps, each on its own domain;
- modular: the same trunk trained the same way for --trunk-rounds rounds, then each worker trains
  its domain's expert (feed-forward branches; trunk frozen) alone, in one lease of as many steps as
  the dense run's remaining rounds cost in FLOPs (FLOPs per step measured by PyTorch's
  FlopCounterMode), so both runs spend the same training FLOPs.
Per domain, the held-out loss of the dense model, of trunk + that domain's expert (expert chosen),
and of all experts with posterior routing (no domain given). Bytes: what each worker's
`tessera worker --json` counted, up and down.

    python bench/modular.py --json bench/results/modular.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tessera.api.client import HubClient
from tessera.core.inner import InnerTrainer, evaluate
from tessera.core.tensors import from_bytes
from tessera.demo import modular_recipe
from tessera.recipe import Recipe, parse_recipe
from tessera.task import assemble, build_model, configure_torch, load_data, loss_of
from tessera.testing.cluster import ROOT, free_port, start_hub, start_worker, wait_workers

DOMAINS = ("encodings", "idlelib", "asyncio", "email")


def step_flops(recipe: Recipe, trained: str | None) -> int:
    """FLOPs of one training step (forward and backward) of the whole model, or of one module's
    worker (``trained``: the only module with gradients)."""
    model = build_model(recipe)
    if trained is not None:
        for name, param in model.named_parameters():
            param.requires_grad_(f".experts.{trained}." in name)
    trainer = InnerTrainer(model, recipe.train)
    batch = next(load_data(recipe).train_batches(None, recipe.train.batch_size, seed=0))
    with FlopCounterMode(display=False) as counter:
        trainer.step(batch)
    return int(counter.get_total_flops())


def run_workers(url: str, token: str, run_id: str, modules: list[str | None], work: Path) -> list[dict]:
    """One `tessera worker` process per entry (a module name, or None for a plain run); their reports."""
    procs, reports = [], []
    for i, module in enumerate(modules):
        name = f"w{i}-{module or 'dense'}"
        options = ["--json", str(work / f"{name}.json")] + (["--module", module] if module else [])
        procs.append(
            start_worker((url, token, run_id), work / name, *options, name=name, log=work / f"{name}.log")
        )
        reports.append(work / f"{name}.json")
    wait_workers(procs, 7200, work)
    return [json.loads(r.read_text()) for r in reports]


def per_domain(model: torch.nn.Module, recipe: Recipe) -> dict[str, float]:
    data = load_data(recipe)
    return {
        d: evaluate(
            model,
            data.shard_validation_batches(d, recipe.eval.batch_size, recipe.eval.batches),
            loss_of(recipe),
        )
        for d in DOMAINS
    }


def latest_parts(client: HubClient, run_id: str) -> list[dict[str, torch.Tensor]]:
    status = client.status(run_id)
    parts = status.modules or [status]
    return [
        from_bytes(client.blob(p.latest_version.blob_sha256, p.run_id)) for p in parts if p.latest_version
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8, help="dense DiLoCo rounds")
    parser.add_argument("--trunk-rounds", type=int, default=6, help="modular: DiLoCo rounds of the trunk")
    parser.add_argument("--inner-steps", type=int, default=100)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "modular.json")
    args = parser.parse_args()
    configure_torch(2)
    dense_text = modular_recipe(list(DOMAINS), args.rounds, args.inner_steps, expert_steps=None)
    dense = parse_recipe(dense_text)
    flops_dense = step_flops(dense, None)
    probe = parse_recipe(modular_recipe(list(DOMAINS), args.trunk_rounds, args.inner_steps, expert_steps=1))
    flops_expert = step_flops(probe.for_module(DOMAINS[0]), DOMAINS[0])
    remaining = (args.rounds - args.trunk_rounds) * args.inner_steps
    expert_steps = round(remaining * flops_dense / flops_expert)
    modular_text = modular_recipe(list(DOMAINS), args.trunk_rounds, args.inner_steps, expert_steps)
    modular = parse_recipe(modular_text)
    print(f"FLOPs per step: dense {flops_dense:.3e}, expert {flops_expert:.3e}; expert steps {expert_steps}")
    with tempfile.TemporaryDirectory() as tmp:
        work, port = Path(tmp), free_port()
        hub = start_hub(work / "hub", port)
        try:
            url, token = f"http://127.0.0.1:{port}", (work / "hub" / "admin.token").read_text().strip()
            with HubClient.connect(url, token) as client:
                start = time.perf_counter()
                dense_id = client.create_run(dense_text).run_id
                dense_reports = run_workers(url, token, dense_id, [None] * len(DOMAINS), work)
                dense_s = time.perf_counter() - start
                modular_id = client.create_run(modular_text).run_id
                trunk_reports = run_workers(url, token, modular_id, ["trunk"] * len(DOMAINS), work)
                expert_reports = run_workers(url, token, modular_id, list(DOMAINS), work)
                modular_s = time.perf_counter() - start - dense_s
                dense_model = assemble(dense, latest_parts(client, dense_id))
                parts = latest_parts(client, modular_id)
                status = client.status(modular_id)
        finally:
            hub.terminate()
            hub.wait(timeout=30)
    routed = assemble(modular, parts)
    chosen = {d: per_domain(assemble(modular, parts, [d]), modular)[d] for d in DOMAINS}
    trunk_only = per_domain(assemble(modular, parts, []), modular)
    sizes = {m.module: m.latest_version.nbytes for m in status.modules if m.latest_version}
    n = len(DOMAINS)
    result = {
        "domains": list(DOMAINS),
        "dense": {
            "val_loss_by_domain": per_domain(dense_model, dense),
            "bytes_down_per_worker": sum(r["bytes_down"] for r in dense_reports) / n,
            "bytes_up_per_worker": sum(r["bytes_up"] for r in dense_reports) / n,
            "training_flops": flops_dense * args.rounds * args.inner_steps * n,
            "wall_s": dense_s,
        },
        "modular": {
            "val_loss_by_domain": chosen,
            "val_loss_by_domain_routed": per_domain(routed, modular),
            "val_loss_by_domain_trunk_only": trunk_only,
            "bytes_down_per_worker": sum(r["bytes_down"] for r in trunk_reports + expert_reports) / n,
            "bytes_up_per_worker": sum(r["bytes_up"] for r in trunk_reports + expert_reports) / n,
            "expert_phase_bytes_down_per_worker": sum(r["bytes_down"] for r in expert_reports) / n,
            "expert_phase_bytes_up_per_worker": sum(r["bytes_up"] for r in expert_reports) / n,
            "training_flops": (
                flops_dense * args.trunk_rounds * args.inner_steps + flops_expert * expert_steps
            )
            * n,
            "wall_s": modular_s,
        },
        "trunk_bytes": sizes["trunk"],
        "expert_bytes": max(sizes[d] for d in DOMAINS),
        "settings": {
            "rounds": args.rounds,
            "trunk_rounds": args.trunk_rounds,
            "inner_steps": args.inner_steps,
            "expert_steps": expert_steps,
            "flops_per_step": {"dense": flops_dense, "expert": flops_expert},
            "batch_size": dense.train.batch_size,
            "model": dense.model.options,
        },
        "command": "python bench/modular.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, torch {torch.__version__}, 4 workers and the hub on 2 cores",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("dense", "modular", "trunk_bytes", "expert_bytes")}, indent=2))


if __name__ == "__main__":
    main()
