"""Bytes on the wire against model quality: per-step data parallel against tessera's DiLoCo
path in several configurations ("arms"), the same tokens per worker in each.

K workers train the reference task (the demo's recipe) inside one process, each on its own
domain shard of the standard library (non-IID):
- data parallel: every step, each worker computes a gradient on its batch; the gradients are
  averaged (what synchronous data parallel does) and one AdamW step is taken, at the learning
  rate the recipe's schedule gives that step;
- an arm: the recipe with some settings changed (``ARMS``: [train], [outer], [communication]
  tables, as a user would write them), trained the way the hub and workers train it: each
  round's H and learning rates from ``tessera.core.schedule``, contributions and version changes
  in the run's codecs with error feedback on both sides (``tessera.core.codecs``), the
  token-weighted mean through the run's outer optimizer (``tessera.core.outer``).
  An arm marked ``iid`` draws each worker's batches from the whole corpus instead of its shard:
  the control that shows how much of a gap comes from non-IID shards.
Bytes per worker count what one worker sends plus receives (parameter-server style, the way the
hub measures it): an fp32 gradient up and the averaged gradient down per step for data
parallel; per round a contribution up and the version's change down at their real safetensors
sizes for an arm (neither counts the initial weights, which every worker builds from the
recipe's seed). Data parallel runs once per distinct [train] table among the arms; ``baseline``
is the best of those runs (the lowest held-out loss), and each arm's ``loss_vs_data_parallel``
is its loss over the baseline's. ``best`` is the arm within ``--target`` of it with the most
bytes saved among those at least ``--min-ratio`` x under data parallel's bytes (None if no arm
is; ``closest``: the non-IID arm nearest data parallel's loss). Arms run ``--jobs`` at a time,
one process and one thread each.

    python bench/communication.py --json bench/results/communication.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tessera.core.aggregation import WeightedMean
from tessera.core.codecs import ErrorFeedback, codec, publish
from tessera.core.inner import Batch, InnerTrainer, evaluate
from tessera.core.outer import outer_optimizer
from tessera.core.pseudo_gradient import pseudo_gradient
from tessera.core.tensors import TensorDict, float_tensors, model_float_tensors, to_bytes
from tessera.demo import DemoSettings, demo_recipe, with_settings
from tessera.recipe import Recipe, parse_recipe
from tessera.task import build_model, load_data, loss_of

Tables = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Arm:
    """A configuration tried: recipe settings over the demo's, and whether the shards are IID."""

    settings: Tables = field(default_factory=dict)
    iid: bool = False
    note: str = ""


def settings(
    outer: tuple[str, float, float] = ("nesterov", 0.7, 0.9),
    lr: float = 3e-3,
    cosine: bool = False,
    codecs: str = "fp32/fp32",
) -> dict[str, dict[str, Any]]:
    """Every table an arm sets, in full (the demo recipe's own defaults may change)."""
    kind, outer_lr, momentum = outer
    up, down = codecs.split("/")
    schedule = {"lr_schedule": "cosine", "warmup_steps": 50} if cosine else {"lr_schedule": "constant"}
    return {
        "outer": {"kind": kind, "lr": outer_lr, "momentum": momentum},
        "train": {"lr": lr, **schedule},
        "communication": {"codec": up, "download_codec": down},
    }


def tuned(codecs: str = "fp32/fp32") -> dict[str, dict[str, Any]]:
    """The best configuration measured: Nesterov 0.7 with momentum 0.5 and a cosine inner lr."""
    return settings(outer=("nesterov", 0.7, 0.5), cosine=True, codecs=codecs)


AVERAGE = ("average", 1.0, 0.0)
ARMS: dict[str, Arm] = {
    "nesterov-0.7-0.9": Arm(settings(), note="the DiLoCo paper's outer optimizer (the old default)"),
    "average": Arm(settings(outer=AVERAGE), note="plain averaging (FedAvg)"),
    "average-cosine": Arm(settings(outer=AVERAGE, cosine=True), note="averaging, cosine inner lr"),
    "tuned": Arm(tuned(), note="Nesterov 0.7 / 0.5, cosine inner lr (warm-up 50 steps, to 10%)"),
    "tuned-iid": Arm(tuned(), iid=True, note="IID control: batches from the whole corpus"),
    "tuned-int3": Arm(tuned("int3/int3"), note="3 bits a value both ways"),
    "tuned-int3-sign": Arm(tuned("int3/sign"), note="int3 up, 1-bit signs down"),
    "tuned-sign": Arm(tuned("sign/sign"), note="1-bit signs both ways"),
}


def recipe_of(demo: DemoSettings, settings: Tables) -> Recipe:
    """The demo's recipe (its workers, rounds and H) with ``settings`` set over it."""
    return parse_recipe(with_settings(demo_recipe(demo), settings))


def task_data(recipe: Recipe, iid: bool) -> tuple[list[Iterator[Batch]], list[Batch]]:
    """Each worker's training batches (its shard's, or the whole corpus' when ``iid``) and the
    held-out batches, from one load of the recipe's data."""
    data = load_data(recipe)
    batch = recipe.train.batch_size
    shards = [data.train_batches(None if iid else s, batch, seed=i) for i, s in enumerate(data.shard_names())]
    return shards, data.validation_batches(recipe.eval.batch_size, recipe.eval.batches)


def data_parallel(recipe: Recipe) -> dict[str, float]:
    """Per-step data parallel on the recipe's steps: the workers' gradients averaged, then one
    AdamW step at the schedule's learning rate (as DDP does)."""
    (shards, val), schedule = task_data(recipe, iid=False), recipe.schedule
    model = build_model(recipe)
    trainer = InnerTrainer(model, recipe.train)
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(schedule.total_steps):
        grads = [torch.zeros_like(p) for p in params]
        for it in shards:
            inputs, targets = next(it)
            model.zero_grad(set_to_none=True)
            trainer.loss_fn(model(inputs), targets).backward()
            for g, p in zip(grads, params, strict=True):
                g += p.grad / len(shards)  # type: ignore[operator]
        for g, p in zip(grads, params, strict=True):
            p.grad = g
        if recipe.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, recipe.train.grad_clip)
        for group in trainer.optimizer.param_groups:
            group["lr"] = recipe.train.lr * schedule.lr_at(step)
        trainer.optimizer.step()
    grad_bytes = len(to_bytes({n: p.detach() for n, p in model.named_parameters()}))
    return {
        "val_loss": evaluate(model, val, trainer.loss_fn),
        "bytes_per_worker": float(2 * grad_bytes * schedule.total_steps),
    }


def diloco(recipe: Recipe, iid: bool) -> dict[str, float]:
    """The recipe's rounds as the hub and workers run them."""
    (shards, val), schedule, wire = task_data(recipe, iid), recipe.schedule, recipe.communication
    global_model = build_model(recipe)
    params = model_float_tensors(global_model)
    workers = [build_model(recipe) for _ in shards]
    trainers = [InnerTrainer(m, recipe.train) for m in workers]
    feedback = [ErrorFeedback(codec(wire.codec)) for _ in shards]
    outer, residual = outer_optimizer(recipe.outer), None
    state: TensorDict = {}
    sent = 0  # version 0: workers build it from the recipe's seed (tessera.worker.session.initial_version)
    for number in range(recipe.run.rounds):
        steps, mean = schedule.steps(number), WeightedMean()
        for model, trainer, it, fb in zip(workers, trainers, shards, feedback, strict=True):
            model.load_state_dict(params, strict=False)
            result = trainer.train(it, steps, lr_scale=schedule.lr_scale(number, steps))
            delta = pseudo_gradient(params, float_tensors(model.state_dict()))
            encoded, decoded = fb.encode(delta)
            sent += len(to_bytes(encoded))
            mean.add(decoded, result.tokens)
        new_params, state = outer.step(params, mean.result(), state)
        published = publish(params, new_params, codec(wire.download_codec), residual, wire.error_feedback)
        params, residual = published.tensors, published.residual
        sent += len(to_bytes(published.change)) * len(shards)  # every worker downloads the change
    global_model.load_state_dict(params, strict=False)
    return {
        "val_loss": evaluate(global_model, val, loss_of(recipe)),
        "bytes_per_worker": float(sent / len(shards)),
        "rounds": recipe.run.rounds,
        "inner_steps": schedule.total_steps,
    }


def run_job(job: tuple[str, DemoSettings, Tables, bool, bool]) -> tuple[str, dict[str, float]]:
    """One data parallel run or one arm, in its own process on one thread."""
    name, demo, settings, iid, is_dp = job
    torch.set_num_threads(1)
    start = time.perf_counter()
    recipe = recipe_of(demo, settings)
    result = data_parallel(recipe) if is_dp else diloco(recipe, iid)
    result["wall_s"] = time.perf_counter() - start
    print(name, json.dumps(result), flush=True)
    return name, result


def dp_settings(settings: Tables) -> dict[str, Any]:
    """What data parallel takes of an arm's settings: its [train] and [run] tables (its steps
    and learning rates; data parallel has no outer optimizer or codecs)."""
    return {k: dict(settings[k]) for k in ("train", "run") if k in settings}


def train_key(settings: Tables) -> str:
    """The data parallel run an arm is compared with."""
    return json.dumps(dp_settings(settings), sort_keys=True)


def summary(
    arms: dict[str, Arm], results: dict[str, dict[str, float]], target: float, min_ratio: float
) -> dict[str, Any]:
    dp = {k.removeprefix("dp:"): v for k, v in results.items() if k.startswith("dp:")}
    base_key = min(dp, key=lambda k: dp[k]["val_loss"])
    baseline = {**dp[base_key], "settings": json.loads(base_key)}
    out: dict[str, Any] = {}
    for name, arm in arms.items():
        r = results[name]
        out[name] = {
            **r,
            "settings": arm.settings,
            "iid": arm.iid,
            "note": arm.note,
            "bytes_ratio": baseline["bytes_per_worker"] / r["bytes_per_worker"],
            "loss_vs_data_parallel": r["val_loss"] / baseline["val_loss"],
            "loss_vs_data_parallel_same_train": r["val_loss"] / dp[train_key(arm.settings)]["val_loss"],
        }
    meeting = [
        n
        for n, a in out.items()
        if a["loss_vs_data_parallel"] <= 1 + target and a["bytes_ratio"] >= min_ratio and not arms[n].iid
    ]
    best = max(meeting, key=lambda n: out[n]["bytes_ratio"]) if meeting else None
    closest = min((n for n in out if not arms[n].iid), key=lambda n: out[n]["loss_vs_data_parallel"])
    return {
        "baseline": baseline,
        "data_parallel": [{"settings": json.loads(k), **v} for k, v in dp.items()],
        "arms": out,
        "best": best,
        "closest": closest,
        "target": {"loss_vs_data_parallel": 1 + target, "bytes_ratio": min_ratio},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=12, help="the demo recipe's (arms may set their own)")
    parser.add_argument("--inner-steps", type=int, default=100, help="the demo recipe's H")
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--target", type=float, default=0.03, help="loss within this of data parallel")
    parser.add_argument("--min-ratio", type=float, default=1000, help="and at least this many x fewer bytes")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    arms = {name: ARMS[name] for name in args.arms}
    trains = {train_key(a.settings): dp_settings(a.settings) for a in arms.values()}
    demo = DemoSettings(workers=args.workers, rounds=args.rounds, inner_steps=args.inner_steps)
    jobs: list[tuple[str, DemoSettings, Tables, bool, bool]]
    jobs = [(f"dp:{k}", demo, t, False, True) for k, t in trains.items()]
    jobs += [(name, demo, arm.settings, arm.iid, False) for name, arm in arms.items()]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(pool.map(run_job, jobs))
    result = {
        **summary(arms, results, args.target, args.min_ratio),
        "settings": {
            "workers": args.workers,
            "rounds": args.rounds,
            "inner_steps": args.inner_steps,
            "batch_size": demo.batch_size,
            "context": 128,
            "recipe": "the demo's (tessera.demo.demo_recipe), each arm's settings set over it",
            "shards": "one standard-library domain group per worker (non-IID), unless iid",
        },
        "wall_s": time.perf_counter() - start,
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "jobs": args.jobs,
            "threads_per_job": 1,
        },
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    brief = {
        n: {k: a[k] for k in ("val_loss", "bytes_ratio", "loss_vs_data_parallel")}
        for n, a in result["arms"].items()
    }
    print(json.dumps({"baseline": result["baseline"], "arms": brief, "best": result["best"]}, indent=2))


if __name__ == "__main__":
    main()
