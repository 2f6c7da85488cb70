"""Pure tensor algorithms: no I/O, no network, no database.

Everything here works on ``TensorDict`` (parameter name -> tensor) so that the hub, the
worker and the benchmarks share one implementation.
"""

from tessera.core.aggregation import staleness_weight, weighted_mean
from tessera.core.outer import OuterOptimizer, OuterSettings, outer_optimizer
from tessera.core.pseudo_gradient import apply_delta, pseudo_gradient
from tessera.core.tensors import TensorDict

__all__ = [
    "OuterOptimizer",
    "OuterSettings",
    "TensorDict",
    "apply_delta",
    "outer_optimizer",
    "pseudo_gradient",
    "staleness_weight",
    "weighted_mean",
]
