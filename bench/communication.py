"""Bytes on the wire: per-step data parallel against tessera's DiLoCo path, same tokens.

K workers train the reference task inside one process, each on its own domain shard:
- baseline: every step, each worker computes a gradient on its batch; the gradients are
  averaged (what synchronous data parallel does) and one AdamW step is taken;
- diloco: each worker runs H AdamW steps from the current version, then the token-weighted
  mean pseudo-gradient goes through the hub's outer optimizer (tessera.core, as the hub does).
Both see the same tokens per worker. Bytes per worker count what one worker sends plus
receives (parameter-server style, the way the hub measures it): a gradient up and the
averaged gradient down per step for the baseline; for DiLoCo per round a pseudo-gradient up
and the version's change down, at their real safetensors sizes (neither counts the initial
weights, which every worker builds from the recipe's seed).
``--codecs`` runs DiLoCo again per codec pair UP/DOWN (contributions / version changes, with
error feedback on both sides, as the hub and workers do) and reports each one's held-out loss
and bytes against data parallel ("bytes_ratio") and fp32 DiLoCo ("loss_vs_diloco").

    python bench/communication.py --json bench/results/communication.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from tessera.core.aggregation import WeightedMean
from tessera.core.codecs import CommunicationSettings, ErrorFeedback, codec, publish
from tessera.core.inner import Batch, InnerTrainer, evaluate
from tessera.core.outer import OuterSettings, outer_optimizer
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import float_tensors, model_float_tensors, to_bytes
from tessera.demo import DemoSettings, demo_recipe
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, load_data, loss_of


class DataParallel:
    """Per-step data parallel: the workers' gradients averaged, then one AdamW step (as DDP does)."""

    def __init__(self, recipe: Recipe, shards: list) -> None:
        self.recipe = recipe
        self.shards = shards
        self.model = build_model(recipe)
        self.trainer = InnerTrainer(self.model, recipe.train)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_bytes = len(to_bytes({n: p.detach() for n, p in self.model.named_parameters()}))

    def step(self) -> None:
        grads = [torch.zeros_like(p) for p in self.params]
        for it in self.shards:
            inputs, targets = next(it)
            self.model.zero_grad(set_to_none=True)
            self.trainer.loss_fn(self.model(inputs), targets).backward()
            for g, p in zip(grads, self.params, strict=True):
                g += p.grad / len(self.shards)  # type: ignore[operator]
        for g, p in zip(grads, self.params, strict=True):
            p.grad = g
        if self.recipe.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe.train.grad_clip)
        self.trainer.optimizer.step()

    def val_loss(self, val: list[Batch]) -> float:
        return evaluate(self.model, val, self.trainer.loss_fn)


def data_parallel(recipe: Recipe, shards: list, val: list[Batch], steps: int) -> dict[str, float]:
    dp = DataParallel(recipe, shards)
    for _ in range(steps):
        dp.step()
    return {"val_loss": dp.val_loss(val), "bytes_per_worker": float(2 * dp.grad_bytes * steps)}


def diloco(
    recipe: Recipe, shards: list, val: list[Batch], rounds: int, wire: CommunicationSettings | None = None
) -> dict[str, float]:
    """DiLoCo as the hub and workers run it: contributions and version changes in the run's codecs,
    with error feedback on both sides (tessera.core.codecs)."""
    wire = wire or CommunicationSettings()
    global_model = build_model(recipe)
    params = model_float_tensors(global_model)
    workers = [build_model(recipe) for _ in shards]
    trainers = [InnerTrainer(m, recipe.train) for m in workers]
    feedback = [ErrorFeedback(codec(wire.codec)) for _ in shards]
    outer, state, residual = outer_optimizer(recipe.outer), {}, None
    sent = 0  # version 0: workers build it from the recipe's seed (tessera.worker.session.initial_version)
    for _ in range(rounds):
        mean = WeightedMean()
        for model, trainer, it, fb in zip(workers, trainers, shards, feedback, strict=True):
            model.load_state_dict(params, strict=False)
            result = trainer.train(it, recipe.train.inner_steps)
            delta = pseudo_gradient(params, float_tensors(model.state_dict()))
            encoded, decoded = fb.encode(delta)
            sent += len(to_bytes(encoded))
            mean.add(decoded, result.tokens)
        new_params, state = outer.step(params, mean.result(), state)
        published = publish(params, new_params, codec(wire.download_codec), residual)
        params, residual = published.tensors, published.residual
        sent += len(to_bytes(published.change)) * len(shards)  # every worker downloads the change
        global_model.load_state_dict(params, strict=False)
    return {
        "val_loss": evaluate(global_model, val, loss_of(recipe)),
        "bytes_per_worker": float(sent / len(shards)),
        "H": recipe.train.inner_steps,
    }


def parse_spec(spec: str, inner_steps: int) -> tuple[CommunicationSettings, int]:
    """UP[/DOWN][@H], e.g. int4/int8@200: contributions in UP, version changes in DOWN (default
    UP), H inner steps per round (default --inner-steps; rounds scale so tokens stay equal)."""
    pair, _, h = spec.partition("@")
    up, _, down = pair.partition("/")
    return CommunicationSettings(codec=up, download_codec=down or up), int(h or inner_steps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--inner-steps", type=int, default=100)
    parser.add_argument("--outer-lr", type=float, default=0.7)
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--codecs",
        nargs="*",
        default=["bf16", "int8", "int4", "int2", "topk1/int4"],
        help="codec pairs UP[/DOWN] to run besides fp32 DiLoCo",
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = DemoSettings(workers=args.workers, rounds=args.rounds, inner_steps=args.inner_steps)
    recipe = parse_recipe(demo_recipe(settings))
    recipe = replace(recipe, outer=OuterSettings(lr=args.outer_lr, momentum=args.outer_momentum))
    data = load_data(recipe)
    val = data.validation_batches(recipe.eval.batch_size, recipe.eval.batches)

    def shard_iters() -> list:
        return [
            data.train_batches(s, recipe.train.batch_size, seed=i) for i, s in enumerate(data.shard_names())
        ]

    start = time.perf_counter()
    baseline = data_parallel(recipe, shard_iters(), val, args.rounds * args.inner_steps)
    baseline_s = time.perf_counter() - start
    low_comm = diloco(recipe, shard_iters(), val, args.rounds)
    fp32 = {args.inner_steps: low_comm}  # uncompressed DiLoCo per H, the reference of each codec
    codecs = {}
    total_steps = args.rounds * args.inner_steps
    for spec in args.codecs:
        wire, h = parse_spec(spec, args.inner_steps)
        at_h = replace(recipe, train=replace(recipe.train, inner_steps=h))
        if h not in fp32:
            fp32[h] = diloco(at_h, shard_iters(), val, total_steps // h)
        run = diloco(at_h, shard_iters(), val, total_steps // h, wire)
        codecs[spec] = {
            **run,
            "bytes_ratio": baseline["bytes_per_worker"] / run["bytes_per_worker"],
            "loss_vs_diloco": run["val_loss"] / fp32[h]["val_loss"] - 1,  # fp32 DiLoCo at the same H
        }
        print(spec, json.dumps(codecs[spec]), flush=True)
    result = {
        "baseline": baseline,
        "diloco": low_comm,
        "bytes_ratio": baseline["bytes_per_worker"] / low_comm["bytes_per_worker"],
        "codecs": codecs,
        "diloco_fp32_by_h": {str(h): run for h, run in fp32.items()},
        "settings": {
            "workers": args.workers,
            "rounds": args.rounds,
            "inner_steps": args.inner_steps,
            "batch_size": recipe.train.batch_size,
            "context": 128,
            "tokens_per_worker": args.rounds * args.inner_steps * recipe.train.batch_size * 128,
            "outer": recipe.outer.__dict__,
            "inner_lr": recipe.train.lr,
        },
        "wall_s": {"baseline": baseline_s, "diloco": time.perf_counter() - start - baseline_s},
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "threads": args.threads,
        },
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("baseline", "diloco", "bytes_ratio", "codecs")}, indent=2))


if __name__ == "__main__":
    main()
