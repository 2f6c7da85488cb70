"""Inner training (AdamW for H steps on local data) and held-out evaluation.

Pure computation on an ``nn.Module`` and an iterator of batches: the worker, the hub's
evaluation and the benchmarks all call these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tessera.core.schedule import LR_SCHEDULES
from tessera.errors import ConfigError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def outputs_of(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the loss compares with the targets: the model's forward on ``inputs`` if it is a
    tensor, else the ``logits`` of what it returned (a ``transformers`` ``ModelOutput``, or a
    dict). ConfigError naming the contract otherwise."""
    output = model(inputs)
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(
        f"the model's forward returned {type(output).__name__}; it must return a tensor of outputs "
        "(e.g. logits of shape (batch, time, vocabulary)), an object with .logits (a transformers "
        "ModelOutput), or a dict with 'logits'"
    )


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats; outputs (..., classes), targets (...)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs.reshape(targets.shape), targets)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def loss_function(name: str) -> LossFn:
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} unknown: use one of {sorted(LOSSES)}")
    return LOSSES[name]


MAX_INNER_STEPS = 1_000_000
MAX_BATCH_SIZE = 65_536


@dataclass(frozen=True)
class InnerSettings:
    inner_steps: int = 100
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    loss: str = "cross_entropy"
    # over the whole run (tessera.core.schedule): H per round, and the learning rate's schedule
    inner_steps_by_round: list[int] = field(default_factory=list)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.inner_steps <= MAX_INNER_STEPS:
            raise ConfigError(
                f"train.inner_steps must be from 1 to {MAX_INNER_STEPS}, got {self.inner_steps}"
            )
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"train.batch_size must be from 1 to {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("train.weight_decay and train.grad_clip cannot be negative (0 turns them off)")
        loss_function(self.loss)
        self.check_schedule()

    def check_schedule(self) -> None:
        if not isinstance(self.inner_steps_by_round, list) or len(self.inner_steps_by_round) > 10_000:
            raise ConfigError("train.inner_steps_by_round must be a list of at most 10000 step counts")
        for steps in self.inner_steps_by_round:
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_INNER_STEPS:
                raise ConfigError(
                    f"train.inner_steps_by_round: each entry must be an integer from 1 to "
                    f"{MAX_INNER_STEPS}, got {steps!r}"
                )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"train.lr_schedule {self.lr_schedule!r} unknown: use one of {list(LR_SCHEDULES)}"
            )
        if not 0 <= self.warmup_steps <= MAX_INNER_STEPS * 100:
            raise ConfigError(
                f"train.warmup_steps must be from 0 to {MAX_INNER_STEPS * 100}, got {self.warmup_steps}"
            )
        if not 0 <= self.final_lr_fraction <= 1:
            raise ConfigError(f"train.final_lr_fraction must be from 0 to 1, got {self.final_lr_fraction}")


@dataclass(frozen=True)
class InnerResult:
    steps: int
    tokens: int
    mean_loss: float
    final_loss: float
    compute_s: float


@dataclass(frozen=True)
class StepDone:
    """Where ``InnerTrainer.train`` stands after one of its steps."""

    done: int  # steps done so far
    tokens: int  # target elements trained on so far
    loss: float  # this step's train loss
    elapsed_s: float


class InnerTrainer:
    """AdamW on one model; the optimizer state persists across rounds, as in DiLoCo."""

    def __init__(self, model: nn.Module, settings: InnerSettings) -> None:
        self.model = model
        self.settings = settings
        self.loss_fn = loss_function(settings.loss)
        trainable = [p for p in model.parameters() if p.requires_grad]  # a module's worker freezes the rest
        self.optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)

    def step(self, batch: Batch, lr_fraction: float = 1.0) -> tuple[float, int]:
        """One optimizer step at ``lr_fraction`` of the base learning rate; returns (loss, target
        elements seen)."""
        inputs, targets = batch
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * lr_fraction
        self.model.train()
        loss = self.loss_fn(outputs_of(self.model, inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), targets.numel()

    def train(
        self,
        batches: Iterator[Batch],
        steps: int,
        on_step: Callable[[StepDone], None] | None = None,
        stop: Callable[[], bool] | None = None,
        lr_scale: Callable[[int], float] | None = None,
    ) -> InnerResult:
        """``steps`` optimizer steps, fewer if ``stop`` (asked after each) says so; ``on_step``
        hears of each as it is done; step j (from 0) at ``lr_scale(j)`` of the base learning rate
        (``tessera.core.schedule``; None: all at the base rate)."""
        start = time.perf_counter()
        losses: list[float] = []
        tokens = 0
        for done in range(1, steps + 1):
            loss, n = self.step(next(batches), lr_scale(done - 1) if lr_scale else 1.0)
            losses.append(loss)
            tokens += n
            if on_step is not None:
                on_step(StepDone(done, tokens, loss, time.perf_counter() - start))
            if stop is not None and done < steps and stop():
                break
        return InnerResult(
            steps=len(losses),
            tokens=tokens,
            mean_loss=sum(losses) / len(losses),
            final_loss=losses[-1],
            compute_s=time.perf_counter() - start,
        )


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn) -> float:
    """Mean loss over held-out batches, weighted by target elements."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in batches:
        total += float(loss_fn(outputs_of(model, inputs), targets)) * targets.numel()
        count += targets.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("no held-out batches to evaluate on")
    return total / count
