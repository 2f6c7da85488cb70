"""What the hub keeps in memory per run: model for evaluation, held-out batches, checks.

Everything here is rebuilt from the recipe stored in the database, so a restarted hub needs
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tessera.core.codecs import codec
from tessera.core.inner import Batch, LossFn, evaluate
from tessera.core.outer import OuterOptimizer, outer_optimizer
from tessera.core.tensors import TensorDict, check_compatible, model_float_tensors
from tessera.errors import MalformedContribution
from tessera.recipe import Recipe
from tessera.task import build_model, load_data, loss_of, training_flops_per_token

SAFETENSORS_HEADER_ALLOWANCE = 4096
HEADER_BYTES_PER_TENSOR = 256


@dataclass
class RunRuntime:
    recipe: Recipe
    model: nn.Module
    loss_fn: LossFn
    validation: list[Batch]
    reference: TensorDict
    shards: list[str]
    outer: OuterOptimizer
    flops_per_token: float

    @classmethod
    def build(cls, recipe: Recipe) -> RunRuntime:
        model = build_model(recipe)
        data = load_data(recipe)
        return cls(
            recipe=recipe,
            model=model,
            loss_fn=loss_of(recipe),
            validation=data.validation_batches(recipe.eval.batch_size, recipe.eval.batches),
            reference=model_float_tensors(model),
            shards=data.shard_names(),
            outer=outer_optimizer(recipe.outer),
            flops_per_token=training_flops_per_token(model),
        )

    def evaluate(self, tensors: TensorDict) -> float:
        """Held-out loss of the model with these weights."""
        self.model.load_state_dict(tensors)
        return evaluate(self.model, self.validation, self.loss_fn)

    def probe_loss(self, tensors: TensorDict) -> float:
        """Held-out loss on the first ``validation.probe_batches`` batches (the quality probe)."""
        self.model.load_state_dict(tensors)
        return evaluate(self.model, self.validation[: self.recipe.validation.probe_batches], self.loss_fn)

    def decode(self, wire: TensorDict, codec_name: str) -> TensorDict:
        """The float32 pseudo-gradient in an upload, checked against the model (MalformedContribution)."""
        if codec_name != self.recipe.communication.codec:
            raise MalformedContribution(
                f"contribution encoded with {codec_name!r}, but this run's codec is "
                f"{self.recipe.communication.codec!r}; encode with the run's codec"
            )
        tensors = codec(codec_name).decode(wire, {k: v.shape for k, v in self.reference.items()})
        check_compatible(tensors, self.reference)
        return tensors

    def upload_limit(self) -> int:
        """Largest acceptable contribution body: the fp32 tensors (top-k of a one-value tensor
        takes 6 bytes: hence 1.5x), two wire parts per tensor, and a generous header."""
        data = sum(t.numel() * t.element_size() for t in self.reference.values())
        return (
            int(1.5 * data) + 2 * HEADER_BYTES_PER_TENSOR * len(self.reference) + SAFETENSORS_HEADER_ALLOWANCE
        )
