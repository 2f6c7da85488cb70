"""What the hub keeps in memory per run: model for evaluation, held-out batches, checks.

Everything here is rebuilt from the recipe stored in the database, so a restarted hub needs
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tessera.core.inner import Batch, LossFn, evaluate
from tessera.core.outer import OuterOptimizer, outer_optimizer
from tessera.core.tensors import TensorDict, check_compatible, model_float_tensors
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

    def check(self, contribution: TensorDict) -> None:
        """Names, shapes, dtypes and finiteness against the model (MalformedContribution)."""
        check_compatible(contribution, self.reference)

    def upload_limit(self) -> int:
        """Largest acceptable contribution body: the tensors plus a generous header."""
        data = sum(t.numel() * t.element_size() for t in self.reference.values())
        return data + HEADER_BYTES_PER_TENSOR * len(self.reference) + SAFETENSORS_HEADER_ALLOWANCE
