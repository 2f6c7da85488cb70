"""One rank of per-step data parallel over a real network: PyTorch DDP on gloo.

bench/wan.py starts one per emulated node (GLOO_SOCKET_IFNAME names the node's interface).
Each rank trains the reference task on its own domain shard, gradients all-reduced every step;
rank 0 writes the mean wall time per step (after --warmup steps) to --json.

    python bench/dp_rank.py --recipe run.toml --rank 0 --world 4 --master 10.77.1.2:29500 \
        --steps 30 --json dp.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tessera.core.inner import InnerTrainer
from tessera.recipe import parse_recipe
from tessera.task import build_model, configure_torch, load_data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True, help="rank 0's address:port")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_torch(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master}",
        rank=args.rank,
        world_size=args.world,
        timeout=timedelta(minutes=10),
    )
    recipe = parse_recipe(args.recipe.read_text())
    data = load_data(recipe)
    shard = data.shard_names()[args.rank]
    batches = data.train_batches(shard, recipe.train.batch_size, seed=args.rank)
    model = build_model(recipe)
    trainer = InnerTrainer(model, recipe.train)
    ddp = DistributedDataParallel(model)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        inputs, targets = next(batches)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.loss_fn(ddp(inputs), targets).backward()  # DDP all-reduces the gradients here
        if recipe.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        trainer.optimizer.step()
        times.append(time.perf_counter() - start)
    dist.barrier()
    if args.rank == 0 and args.json:
        measured = times[args.warmup :]
        args.json.write_text(json.dumps({"steps": len(measured), "step_s": sum(measured) / len(measured)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
