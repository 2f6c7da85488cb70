"""What a closing round computes, holding no lock: the combined pseudo-gradient of its
contributions (plain means stream from disk, one at a time), the outer optimizer's step on the
base version, the version workers rebuild from the one before plus its change in the download
codec, and its held-out loss; the blobs are stored before the round commits. Also the format of
a run's outer-state blob (the outer optimizer's state and the download codec's residual).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.core.aggregation import WeightedMean
from tessera.core.codecs import Published, codec, publish
from tessera.core.robust import Aggregate, AggregationSettings, aggregate
from tessera.core.tensors import TensorDict, from_bytes, to_bytes
from tessera.hub import queries
from tessera.hub.context import HubContext
from tessera.hub.modules import frozen_versions
from tessera.hub.runtime import RunRuntime
from tessera.hub.versions import NewVersion

RESIDUAL = "download_residual."  # prefix of the download codec's residual in the outer-state blob


@dataclass(frozen=True)
class Computed:
    """What a close computed, holding no run lock."""

    new: NewVersion  # the version's blobs, serialized and stored already
    outer_state: bytes | None  # the outer optimizer's state and the download residual, stored
    val_loss: float
    clipped: int
    dropped: dict[int, float]  # index -> cosine of those the direction check dropped


def compute(
    hub: HubContext,
    run_id: str,
    blobs: Sequence[tuple[str, float]],
    base_sha: str,
    outer_state_sha: str | None,
) -> Computed:
    """The aggregate of ``blobs`` ((sha256, weight) each), the outer step from the version
    ``base_sha`` and the run's outer state, the new version's held-out loss; its blobs stored."""
    runtime = hub.runtimes.get(run_id)
    combined = combine(hub, blobs, runtime.recipe.aggregation)
    params = from_bytes(hub.store.get(base_sha))
    with hub.state.reading() as s:
        frozen = frozen_versions(s, queries.run(s, run_id), runtime.recipe) or []
    stored = from_bytes(hub.store.get(outer_state_sha)) if outer_state_sha else {}
    outer_state, residual = split_state(stored)
    new_params, new_state = runtime.outer.step(params, combined.delta, outer_state)
    published = publish_version(runtime, params, new_params, residual)
    with runtime.lock:
        hub.runtimes.load_frozen(runtime, frozen)
        val_loss = runtime.evaluate(published.tensors)
    require_finite(published.tensors, val_loss)
    new = NewVersion(to_bytes(published.tensors), val_loss, to_bytes(published.change))
    state = join_state(new_state, published.residual)
    state_blob = to_bytes(state) if state else None
    for blob in (new.blob, new.change, state_blob):  # written before the commit, outside it
        if blob is not None:
            hub.store.put(blob)
    return Computed(new, state_blob, val_loss, combined.clipped, combined.dropped)


def publish_version(runtime: RunRuntime, old: TensorDict, new: TensorDict, residual: TensorDict) -> Published:
    """The version workers can rebuild from the one before plus the change in the download codec."""
    settings = runtime.recipe.communication
    return publish(old, new, codec(settings.download_codec), residual or None, settings.error_feedback)


def combine(hub: HubContext, blobs: Sequence[tuple[str, float]], settings: AggregationSettings) -> Aggregate:
    """The round's combined pseudo-gradient; plain means stream from disk, one at a time."""
    if settings.streaming:
        mean = WeightedMean()
        for sha, weight in blobs:
            mean.add(from_bytes(hub.store.get(sha)), weight)
        return Aggregate(mean.result(), clipped=0)
    return aggregate([(from_bytes(hub.store.get(sha)), w) for sha, w in blobs], settings)


def require_finite(tensors: TensorDict, val_loss: float) -> None:
    """ValueError unless a new version and its held-out loss are finite (else the round fails)."""
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if bad is not None or not math.isfinite(val_loss):
        raise ValueError(
            f"the round's aggregated update gives a version that is not finite (tensor {bad}, held-out "
            f"loss {val_loss}); its contributions are not used"
        )


def split_state(stored: TensorDict) -> tuple[TensorDict, TensorDict]:
    """(outer optimizer state, download residual) from the run's state blob."""
    outer = {k: v for k, v in stored.items() if not k.startswith(RESIDUAL)}
    residual = {k.removeprefix(RESIDUAL): v for k, v in stored.items() if k.startswith(RESIDUAL)}
    return outer, residual


def join_state(outer: TensorDict, residual: TensorDict) -> TensorDict:
    return {**outer, **{RESIDUAL + k: v for k, v in residual.items()}}
