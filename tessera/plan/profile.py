"""Model profiles: what the planner needs to know about any ``torch.nn.Module``.

Parameters per module, FLOPs per token (a formula, or counted by PyTorch's FlopCounterMode on a
real batch), activation bytes per sample (measured with forward hooks) and bytes per
synchronization for each wire format.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tessera.core.codecs import TOPK, codec
from tessera.core.inner import Batch, LossFn, outputs_of
from tessera.core.schedule import RunSchedule
from tessera.errors import ConfigError
from tessera.recipe import Recipe
from tessera.task import build_model, load_data, loss_of, training_flops_per_token


@dataclass(frozen=True)
class WireFormat:
    """How a pseudo-gradient travels: bits per value, plus one scale per block, or the top k."""

    value_bits: int
    block: int = 0  # values per scale; 0: no scales
    scale_bits: int = 32
    keep: float = 1.0  # fraction of values sent (top-k); each sent value carries a 32-bit index

    def nbytes(self, numel: int) -> int:
        kept = math.ceil(numel * self.keep) if self.keep < 1 else numel
        bits = kept * self.value_bits + (kept * 32 if self.keep < 1 else 0)
        if self.block:
            bits += math.ceil(kept / self.block) * self.scale_bits
        return math.ceil(bits / 8)


WIRE_FORMATS: dict[str, WireFormat] = {
    "fp32": WireFormat(32),
    "bf16": WireFormat(16),
    "fp16": WireFormat(16),
    "int8": WireFormat(8, block=256),
    "int4": WireFormat(4, block=64),
    "int3": WireFormat(3, block=256, scale_bits=16),
    "int2": WireFormat(2, block=64),
    "sign": WireFormat(1, block=256, scale_bits=16),
    "topk1": WireFormat(16, keep=0.01),
}


def wire_format_of(name: str) -> WireFormat:
    """The wire format of codec ``name`` (``topk<percent>`` for any percent); ConfigError naming
    the codecs otherwise."""
    if name in WIRE_FORMATS:
        return WIRE_FORMATS[name]
    match = TOPK.match(name)
    if match is None:
        codec(name)  # the codec's own error, listing the choices
        raise ConfigError(f"codec {name!r} has no wire format")
    return WireFormat(16, keep=float(match.group(1)) / 100)


@dataclass(frozen=True)
class ModelProfile:
    parameters: int
    trainable: int
    per_module: dict[str, int]
    flops_per_token: float
    flops_source: str  # "formula" or "measured"
    activation_bytes_per_sample: float
    tokens_per_sample: int
    tensor_numels: tuple[int, ...]  # float tensors that travel in a contribution

    def sync_bytes(self, wire_format: str) -> int:
        """Bytes of one contribution (or one version) in this wire format."""
        fmt = wire_format_of(wire_format)
        return sum(fmt.nbytes(n) for n in self.tensor_numels)

    @property
    def gradient_bytes(self) -> int:
        """Bytes all-reduced per synchronous step (fp32 gradients)."""
        return 4 * self.trainable


@dataclass(frozen=True)
class RunBytes:
    """What one worker sends and receives over a whole run, counted as the hub counts it (its
    contributions up, every version's change down), against per-step data parallel on the same
    steps (an fp32 gradient up and the averaged one down at every step)."""

    rounds: int
    steps: int  # the run's nominal inner steps per worker (tessera.core.schedule)
    codecs: str  # "UP/DOWN"
    upload: int
    download: int
    data_parallel: int

    @property
    def total(self) -> int:
        return self.upload + self.download

    @property
    def ratio(self) -> float:
        """Data parallel's bytes over this run's."""
        return self.data_parallel / max(1, self.total)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "total": self.total, "ratio": self.ratio}


def run_bytes(profile: ModelProfile, schedule: RunSchedule, up: str, down: str) -> RunBytes:
    """One worker's bytes over the ``schedule``'s rounds with contributions in ``up`` and version
    changes in ``down`` (safetensors headers left out: a few hundred bytes a message)."""
    rounds, steps = schedule.rounds, schedule.total_steps
    return RunBytes(
        rounds=rounds,
        steps=steps,
        codecs=f"{up}/{down}",
        upload=rounds * profile.sync_bytes(up),
        download=rounds * profile.sync_bytes(down),
        data_parallel=2 * profile.gradient_bytes * steps,
    )


def parameters_per_module(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level child; parameters held by the root itself under '(root)'."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))
    if own:
        counts["(root)"] = own
    return counts


def count_training_flops(model: nn.Module, batch: Batch, loss_fn: LossFn) -> float:
    """FLOPs of one forward and backward pass on ``batch``, counted by PyTorch's FlopCounterMode."""
    inputs, targets = batch
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(outputs_of(model, inputs), targets).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def activation_bytes_per_sample(model: nn.Module, inputs: torch.Tensor) -> float:
    """Bytes of every leaf module's output in a forward pass of the batch's first sample: what
    backward keeps alive, per sample (they grow with the batch; a forward of one sample costs
    1/batch of the batch's)."""
    total = 0.0

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def profile_model(
    model: nn.Module,
    batch: Batch,
    loss_fn: LossFn,
    formula_flops_per_token: float | None = None,
) -> ModelProfile:
    """Profile ``model`` on one real ``batch``; FLOPs are counted unless a formula is given."""
    inputs, targets = batch
    tokens = targets.numel()
    if formula_flops_per_token is None:
        flops, source = count_training_flops(model, batch, loss_fn) / tokens, "measured"
    else:
        flops, source = formula_flops_per_token, "formula"
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]
    return ModelProfile(
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        per_module=parameters_per_module(model),
        flops_per_token=flops,
        flops_source=source,
        activation_bytes_per_sample=activation_bytes_per_sample(model, inputs),
        tokens_per_sample=tokens // inputs.shape[0],
        tensor_numels=tuple(t.numel() for t in floats),
    )


def profile_recipe(recipe: Recipe, measure_flops: bool = False) -> ModelProfile:
    """Profile the recipe's model on one batch of its own data."""
    model = build_model(recipe)
    batch = load_data(recipe).validation_batches(recipe.train.batch_size, 1)[0]
    formula = None if measure_flops else training_flops_per_token(model)
    return profile_model(model, batch, loss_of(recipe), formula)
