"""Personal fine-tuning, measured: LoRA adapters on the owner's own domain, with the code path
of `tessera finetune` (tessera.finetune).

A base model (tessera's reference byte LM) is trained on the standard library without one of
its packages; that package is the owner's private data. The owner fine-tunes the base with LoRA
on the package's training split and the held-out loss on the package's held-out split is
measured before (``base_loss``) and after (``adapter_loss``), with the adapter's size against the
model's. Writes JSON with the command that made it.

    python bench/finetune.py --json bench/results/finetune.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tessera.core.inner import InnerSettings, InnerTrainer, cross_entropy
from tessera.core.tensors import to_bytes
from tessera.data.text import load, stdlib_root
from tessera.finetune import LoraSettings, finetune
from tessera.models.lm import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", default="email", help="the owner's package of the stdlib")
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    start = time.perf_counter()
    base_data = load(None, context=128, num_shards=1, exclude=[f"{args.domain}/*"])
    model = build()
    trainer = InnerTrainer(model, InnerSettings(inner_steps=args.base_steps, batch_size=16, lr=3e-3))
    base_train = trainer.train(base_data.train_batches(None, 16, seed=0), args.base_steps)
    own = load(str(stdlib_root() / args.domain), context=128, num_shards=1)
    result = finetune(model, own, cross_entropy, LoraSettings(rank=args.rank, steps=args.steps, seed=0))
    model_bytes = len(to_bytes({k: v for k, v in build().state_dict().items()}))
    summary = {
        "base_loss": result.base_loss,
        "adapter_loss": result.adapter_loss,
        "adapter_bytes": result.adapter_bytes,
        "model_bytes": model_bytes,
        "adapter_share_of_model": result.adapter_bytes / model_bytes,
        "base_train_final_loss": base_train.final_loss,
        "owner_domain": args.domain,
        "owner_data": own.report,
        "base_steps": args.base_steps,
        "finetune_steps": result.steps,
        "finetune_tokens": result.tokens,
        "rank": args.rank,
        "adapted_layers": len(result.targets),
        "finetune_wall_s": result.wall_s,
        "wall_s": time.perf_counter() - start,
        "command": "python bench/finetune.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
