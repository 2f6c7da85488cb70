"""A worker made of a torchrun group: every rank trains with DDP, rank 0 talks to the hub.

    torchrun --nproc-per-node 2 -m tessera worker --hub URL --token T --run-id R --name NAME

(``--run-id``: torchrun would take ``--run`` for its own ``--run-path``.)

Rank 0 leases, downloads and uploads exactly like a single-process worker; before each lease's
inner steps it broadcasts the lease and the base weights to the other ranks, which train on
their own batches of the leased shard. PyTorch's DistributedDataParallel all-reduces the
gradients of every step (gloo on CPU, NCCL on GPU), so all ranks hold the same weights at the
end, and rank 0 uploads one contribution counting every rank's tokens.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tessera.api.client import HubAPI
from tessera.api.messages import ContributionReply, LeaseGrant
from tessera.core.inner import Batch, InnerResult, InnerTrainer
from tessera.data.source import DataSource
from tessera.errors import ConfigError
from tessera.recipe import Recipe, parse_recipe
from tessera.task import DEFAULT_TRUST, build_model, load_data
from tessera.trust import Trust
from tessera.worker.loop import WorkLoop
from tessera.worker.session import WorkerSettings, WorkerSummary

log = logging.getLogger(__name__)
DONE = b"done"


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class Group:
    """This process's place in the torchrun group and the collectives the worker needs."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank (as a uint8 tensor: nothing is pickled)."""
        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.rank == 0 and data is not None:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().numpy().tobytes())

    def broadcast_weights(self, model: nn.Module) -> None:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)

    def total(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def rank_seed(lease_seed: int, rank: int) -> int:
    """Distinct data per rank within one lease, reproducible from the lease."""
    return (lease_seed * 1_000_003 + rank) % 2**32


def weight_checksum(model: nn.Module) -> float:
    """A cheap fingerprint of the weights: equal on every rank when DDP kept them in step."""
    return float(sum(float(t.double().sum()) for t in model.state_dict().values() if t.is_floating_point()))


class GroupTrainer:
    """The DDP-wrapped model and the inner trainer every rank runs."""

    def __init__(
        self, group: Group, recipe: Recipe, model: nn.Module, data: DataSource, own_data: bool
    ) -> None:
        self.group = group
        self.recipe = recipe
        self.model = model.to(group.device)
        self.data = data
        self.own_data = own_data
        self.ddp = DistributedDataParallel(self.model)
        self.trainer = InnerTrainer(self.ddp, recipe.train)

    def batches(self, lease: LeaseGrant) -> Iterator[Batch]:
        shard = None if self.own_data else lease.shard
        seed = rank_seed(lease.seed, self.group.rank)
        for inputs, targets in self.data.train_batches(shard, self.recipe.train.batch_size, seed):
            yield inputs.to(self.group.device), targets.to(self.group.device)

    def train(self, lease: LeaseGrant) -> InnerResult:
        """Start from rank 0's weights, train the lease's steps in lockstep, count every rank's tokens."""
        self.group.broadcast_weights(self.model)
        lr_scale = self.recipe.schedule.lr_scale(lease.round, lease.inner_steps)
        result = self.trainer.train(self.batches(lease), lease.inner_steps, lr_scale=lr_scale)
        log.info(
            "rank %d: lease %s trained, weight checksum %.12e",
            self.group.rank,
            lease.lease_id,
            weight_checksum(self.model),
        )
        tokens = int(self.group.total(result.tokens))
        mean_loss = self.group.total(result.mean_loss) / self.group.world_size
        return InnerResult(result.steps, tokens, mean_loss, result.final_loss, result.compute_s)


class GroupWorkLoop(WorkLoop):
    """Rank 0: the hub's worker, leading the group through each lease."""

    def __init__(self, client: HubAPI, settings: WorkerSettings, group: Group) -> None:
        super().__init__(client, settings)
        session = self.session
        if session.recipe.communication.overlap:
            raise ConfigError(
                "communication.overlap is not available to torchrun group workers yet; "
                "set it to false for this run or use single-process workers"
            )
        if session.identity.module is not None:
            raise ConfigError(
                "modules of a modular run train on single-process workers for now; "
                "start this worker without torchrun"
            )
        self.group = group
        group.broadcast_bytes(client.status(session.identity.run_id).recipe.encode())
        self.group_trainer = GroupTrainer(
            group, session.recipe, session.model, session.data, settings.data_path is not None
        )

    def train(self, lease: LeaseGrant) -> InnerResult:
        self.group.broadcast_bytes(lease.model_dump_json().encode())
        return self.group_trainer.train(lease)

    def run(
        self,
        stop: threading.Event | None = None,
        on_contribution: Callable[[ContributionReply], None] | None = None,
        leave: Callable[[], bool] | None = None,
    ) -> WorkerSummary:
        try:
            return super().run(stop, on_contribution, leave)
        finally:
            self.group.broadcast_bytes(DONE)


def follow(group: Group, data_path: str | None, trust: Trust = DEFAULT_TRUST) -> int:
    """Ranks above 0: train each lease rank 0 broadcasts until it says done; returns leases done.
    Rank 0 joined the run only after checking its code against the same trust."""
    recipe = parse_recipe(group.broadcast_bytes(None).decode())
    trainer = GroupTrainer(
        group,
        recipe,
        build_model(recipe, trust),
        load_data(recipe, data_path, trust),
        data_path is not None,
    )
    done = 0
    while (message := group.broadcast_bytes(None)) != DONE:
        trainer.train(LeaseGrant.model_validate_json(message))
        done += 1
    log.info("rank %d: %d leases trained", group.rank, done)
    return done
