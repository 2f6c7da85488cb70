"""One hostile worker of four: does the hub's validation and robust aggregation hold?

The reference LM (stdlib corpus, demo model) trains in lockstep on a real in-process hub with
robust settings, once with 3 honest workers (clean) and once per attack with the same 3 honest
workers plus 1 adversary (tessera.testing.adversary: sign_flip x10, noise at the honest scale,
NaN). Reported per attack: clean and attacked held-out loss, how many uploads the adversary
made, how many of them the hub rejected, refused or clipped, and honest uploads rejected.

    python bench/byzantine.py --json bench/results/byzantine.json
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

from tessera.blobs import FileBlobStore
from tessera.demo import DemoSettings, demo_recipe
from tessera.hub.service import HubService
from tessera.hub.state import State
from tessera.testing.adversary import ROBUST_SECTIONS, Attack, lockstep_run


class ManualClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(recipe: str, attacks: list[Attack | None], home: Path) -> dict[str, object]:
    home.mkdir(parents=True)
    clock = ManualClock()
    service = HubService(State(f"sqlite:///{home / 'hub.sqlite'}"), FileBlobStore(home / "blobs"), clock)
    admin = service.providers.principal(service.providers.bootstrap_admin())
    created = service.create_run(admin, recipe.replace("quorum = 4", f"quorum = {len(attacks)}"))
    workers = lockstep_run(service, admin, created.run_id, attacks, home / "workers", clock.advance)
    records = service.contributions(created.run_id, admin)
    rounds = service.rounds(created.run_id, admin)
    loss = service.status(created.run_id, admin).latest_version.val_loss
    service.state.close()
    per_worker = []
    for w in workers:
        mine = [c for c in records if c.worker_id == w.loop.session.identity.worker_id]
        refused = w.outcome.statuses.count("refused")
        per_worker.append(
            {
                "uploads": len(mine) + refused,
                "rejected": sum(c.status == "rejected" for c in mine),
                "refused": refused,
                "reasons": sorted({c.reason or "" for c in mine} - {""}),
            }
        )
    return {"val_loss": loss, "workers": per_worker, "clipped": sum(r.clipped for r in rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = (
        demo_recipe(DemoSettings(workers=4, rounds=args.rounds, inner_steps=args.inner_steps))
        + ROBUST_SECTIONS
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clean = run(recipe, [None, None, None], Path(tmp) / "clean")
        attacks = {}
        for attack in ("sign_flip", "noise", "nan"):
            result = run(recipe, [None, None, None, attack], Path(tmp) / attack)  # type: ignore[list-item]
            bad, honest = result["workers"][3], result["workers"][:3]  # type: ignore[index]
            attacks[attack] = {
                "clean_val_loss": clean["val_loss"],
                "attacked_val_loss": result["val_loss"],
                "relative_change": (result["val_loss"] - clean["val_loss"]) / clean["val_loss"],  # type: ignore[operator]
                "malicious_contributions": bad["uploads"],
                "malicious_rejected_or_clipped": bad["rejected"] + bad["refused"],
                "malicious_reasons": bad["reasons"],
                "honest_rejected": sum(w["rejected"] + w["refused"] for w in honest),
                "clipped_in_run": result["clipped"],
            }
    output = {
        "attacks": attacks,
        "settings": {
            "rounds": args.rounds,
            "inner_steps": args.inner_steps,
            "honest_workers": 3,
            "robust_recipe": ROBUST_SECTIONS.strip(),
        },
        "wall_s": time.perf_counter() - start,
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "command": "python " + " ".join(sys.argv),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(attacks, indent=2))


if __name__ == "__main__":
    main()
