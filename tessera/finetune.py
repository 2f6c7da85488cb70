"""Personal fine-tuning: LoRA adapters (``peft``) on a run's version, trained on the owner's own
data, which never leaves the machine.

``finetune`` wraps the model with LoRA factors on its linear layers (all but the output head,
unless ``targets`` names others), trains only those with AdamW on the data's training split, and
measures the held-out loss of the same data before and after. What goes to the hub is the
adapter's tensors, its settings and ``fingerprint``: a sha256 over the data's tokens, so the
lineage can tell which data made it without holding the data. ``apply_adapter`` puts an adapter
back on a model, merged into its weights (for sampling and export) or kept apart.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tessera.core.inner import LossFn, evaluate, outputs_of
from tessera.core.tensors import TensorDict, to_bytes
from tessera.data.corpus import Corpus
from tessera.data.source import DataSource
from tessera.errors import ConfigError

OUTPUT_HEADS = ("head", "lm_head")  # left without adapters: they map to the vocabulary


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    steps: int = 200
    lr: float = 2e-3
    batch_size: int = 16
    eval_batches: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 1024:
            raise ConfigError(f"--rank must be from 1 to 1024, got {self.rank}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_batches < 1:
            raise ConfigError("--steps, --batch-size and --eval-batches must be at least 1")
        if not (self.lr > 0 and self.alpha > 0):
            raise ConfigError("--lr and --alpha must be positive")


@dataclass
class FinetuneResult:
    tensors: TensorDict
    targets: list[str]
    base_loss: float
    adapter_loss: float
    steps: int
    tokens: int
    wall_s: float

    @property
    def adapter_bytes(self) -> int:
        return len(to_bytes(self.tensors))


def linear_layers(model: nn.Module) -> list[str]:
    """Paths of the model's linear layers (``nn.Linear`` and ``transformers``' ``Conv1D``), but
    the output heads."""
    found = []
    for path, module in model.named_modules():
        if path.rpartition(".")[2] in OUTPUT_HEADS:
            continue
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            found.append(path)
    return found


def _peft() -> tuple[type, Callable[..., nn.Module]]:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise ConfigError("fine-tuning needs the peft package: pip install 'tessera[finetune]'") from exc
    return LoraConfig, get_peft_model


def with_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str]) -> nn.Module:
    """``model`` with fresh LoRA factors on ``targets`` (only they are trainable)."""
    config_class, get_peft_model = _peft()
    modules = dict(model.named_modules())
    missing = [t for t in targets if t not in modules]
    if missing or not targets:
        raise ConfigError(f"no layers {missing} in the model to adapt; it has {linear_layers(model)[:8]}")
    conv1d = any(type(modules[t]).__name__ == "Conv1D" for t in targets)
    config = config_class(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, fan_in_fan_out=conv1d
    )
    return get_peft_model(model, config)


def adapter_tensors(adapted: nn.Module) -> TensorDict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(adapted).items()}


def apply_adapter(
    model: nn.Module, tensors: TensorDict, rank: int, alpha: float, targets: Sequence[str], merge: bool = True
) -> nn.Module:
    """``model`` with an adapter's tensors: merged into its weights, or as a ``peft`` model."""
    from peft import set_peft_model_state_dict

    adapted = with_lora(model, rank, alpha, targets)
    result = set_peft_model_state_dict(adapted, tensors)
    unexpected = list(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise ConfigError(f"the adapter has tensors the model lacks: {unexpected[:5]}")
    return adapted.merge_and_unload() if merge else adapted  # type: ignore[operator]


def fingerprint(source: DataSource) -> str:
    """sha256 over the data's tokens (training units, then the held-out split), or, for a source
    that is not a corpus, over its held-out batches."""
    digest = hashlib.sha256()
    if isinstance(source, Corpus):
        for unit in sorted(source.domains):
            digest.update(unit.encode() + b"\0" + source.domains[unit].tobytes())
        digest.update(source.held_out.tobytes())
    else:
        for inputs, targets in source.validation_batches(16, 4):
            digest.update(inputs.numpy().tobytes() + targets.numpy().tobytes())
    return digest.hexdigest()


def finetune(
    model: nn.Module,
    source: DataSource,
    loss_fn: LossFn,
    settings: LoraSettings,
    targets: Sequence[str] = (),
    on_step: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Train LoRA factors of ``model`` on ``source``; held-out loss of ``source`` before and after."""
    held_out = source.validation_batches(settings.batch_size, settings.eval_batches)
    base_loss = evaluate(model, held_out, loss_fn)
    chosen = list(targets) or linear_layers(model)
    torch.manual_seed(settings.seed)
    adapted = with_lora(model, settings.rank, settings.alpha, chosen)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=0.0)
    batches = source.train_batches(None, settings.batch_size, settings.seed)
    start, tokens = time.perf_counter(), 0
    adapted.train()
    for step in range(1, settings.steps + 1):
        inputs, labels = next(batches)
        loss = loss_fn(outputs_of(adapted, inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        tokens += labels.numel()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    adapter_loss = evaluate(adapted, held_out, loss_fn)
    return FinetuneResult(
        adapter_tensors(adapted),
        chosen,
        base_loss,
        adapter_loss,
        settings.steps,
        tokens,
        time.perf_counter() - start,
    )
