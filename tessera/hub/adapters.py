"""Adapters: providers' LoRA fine-tunes of a run's versions, kept at the hub with their lineage.

An upload names the base version it adapts, its LoRA settings and a fingerprint of the data it
was trained on (never the data). Its tensors are checked against the run's model before they are
stored: every name is ``base_model.model.<module>.lora_A|lora_B.weight`` of a module of the model
(built on the meta device), with shapes (rank, fan-in) and (fan-out, rank), all finite, and the
whole no larger than the model. Each (owner, name) is versioned: a new upload is number n + 1 with
the previous as its parent. An adapter is read by its owner and the hub's admins, or, when shared,
by whoever may read the run; others are told it does not exist.
"""

from __future__ import annotations

import re

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from tessera.api.messages import AdapterInfo, AdapterMeta
from tessera.core.tensors import TensorDict, from_bytes
from tessera.errors import ConfigError, MalformedContribution, NotFound, PayloadTooLarge
from tessera.hub import queries
from tessera.hub.auth import Principal
from tessera.hub.context import HubContext
from tessera.hub.runs import Runs
from tessera.hub.tables import Adapter, Provider
from tessera.task import meta_model

LORA_NAME = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")


def check_adapter(tensors: TensorDict, meta: AdapterMeta, model: torch.nn.Module) -> None:
    """MalformedContribution naming the first tensor that is not a LoRA factor of ``model``."""
    modules = dict(model.named_modules())
    seen: dict[str, set[str]] = {}
    for name, t in tensors.items():
        match = LORA_NAME.match(name)
        if match is None:
            raise MalformedContribution(
                f"adapter tensor {name!r} is not named base_model.model.<module>.lora_A|B.weight"
            )
        path, factor = match.groups()
        weight = getattr(modules.get(path), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise MalformedContribution(f"adapter tensor {name!r}: the model has no 2-D weight at {path!r}")
        rank, fan = (t.shape if factor == "A" else t.shape[::-1]) if t.dim() == 2 else (None, None)
        if rank != meta.rank or fan not in tuple(weight.shape):
            raise MalformedContribution(
                f"adapter tensor {name!r} has shape {tuple(t.shape)}; rank {meta.rank} on a weight of "
                f"shape {tuple(weight.shape)} needs lora_A (rank, fan-in) and lora_B (fan-out, rank)"
            )
        if not torch.isfinite(t.float()).all():
            raise MalformedContribution(f"adapter tensor {name!r} is not finite")
        seen.setdefault(path, set()).add(factor)
    unpaired = sorted(p for p, factors in seen.items() if factors != {"A", "B"})
    if not seen or unpaired:
        raise MalformedContribution(
            f"an adapter needs lora_A and lora_B of each module; unpaired: {unpaired}"
        )


def adapter_info(a: Adapter, owner: str) -> AdapterInfo:
    return AdapterInfo(
        adapter_id=a.id,
        run_id=a.run_id,
        name=a.name,
        number=a.number,
        owner=owner,
        shared=a.shared,
        parent_id=a.parent_id,
        base_version=a.base_version_number,
        base_version_id=a.base_version_id,
        blob_sha256=a.blob_sha,
        nbytes=a.nbytes,
        rank=a.settings["rank"],
        alpha=a.settings["alpha"],
        target_modules=a.settings["target_modules"],
        data_fingerprint=a.data_fingerprint,
        data_tokens=a.data_tokens,
        steps=a.steps,
        base_loss=a.base_loss,
        adapter_loss=a.adapter_loss,
        created_at=a.created_at,
    )


def may_read_adapter(who: Principal, a: Adapter) -> bool:
    return a.shared or who.is_admin or a.owner_id == who.provider_id


class Adapters:
    def __init__(self, hub: HubContext, runs: Runs) -> None:
        self.hub, self.runs = hub, runs

    def upload_limit(self, run_id: str, who: Principal) -> int:
        """The most bytes an adapter of the run may have, its model's (403 unless ``who`` may read
        the run: its readers may upload adapters)."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            return max(queries.run(s, run_id).model_bytes, 1)

    def upload(self, run_id: str, who: Principal, meta: AdapterMeta, body: bytes) -> AdapterInfo:
        """Check and keep an adapter of one of the run's versions."""
        limit = self.upload_limit(run_id, who)
        with self.hub.state.reading() as s:
            base_id = queries.version(s, run_id, meta.base_version).id
        if len(body) > limit:
            raise PayloadTooLarge(f"an adapter of {len(body)} bytes is larger than the model ({limit} bytes)")
        recipe = self.hub.runtimes.whole_recipe(run_id)
        if recipe.modules:
            raise ConfigError(f"run {run_id} is modular; fine-tune one of its modules' runs instead")
        check_adapter(from_bytes(body), meta, meta_model(recipe, self.hub.config.trust))
        sha = self.hub.store.put(body)
        with self.hub.state.transaction() as s:
            previous = self._latest(s, run_id, who.provider_id, meta.name)
            row = Adapter(
                run_id=run_id,
                owner_id=who.provider_id,
                name=meta.name,
                number=(previous.number + 1) if previous else 1,
                parent_id=previous.id if previous else None,
                shared=meta.shared,
                base_version_id=base_id,
                base_version_number=meta.base_version,
                blob_sha=sha,
                nbytes=len(body),
                settings={"rank": meta.rank, "alpha": meta.alpha, "target_modules": meta.target_modules},
                data_fingerprint=meta.data_fingerprint,
                data_tokens=meta.data_tokens,
                steps=meta.steps,
                base_loss=meta.base_loss,
                adapter_loss=meta.adapter_loss,
                created_at=self.hub.clock(),
            )
            s.add(row)
            s.flush()
            return adapter_info(row, who.name)

    @staticmethod
    def _latest(s: Session, run_id: str, owner_id: str, name: str) -> Adapter | None:
        return s.scalars(
            select(Adapter)
            .where(Adapter.run_id == run_id, Adapter.owner_id == owner_id, Adapter.name == name)
            .order_by(Adapter.number.desc())
            .limit(1)
        ).first()

    def list(self, run_id: str, who: Principal) -> list[AdapterInfo]:
        """The run's adapters the caller may read, oldest first."""
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            queries.run(s, run_id)
            rows = s.execute(
                select(Adapter, Provider.name)
                .join(Provider, Provider.id == Adapter.owner_id)
                .where(Adapter.run_id == run_id)
                .order_by(Adapter.created_at, Adapter.number)
            ).all()
            return [adapter_info(a, owner) for a, owner in rows if may_read_adapter(who, a)]

    def get(self, run_id: str, who: Principal, adapter_id: str) -> AdapterInfo:
        self.runs.authorize_read(run_id, who)
        with self.hub.state.reading() as s:
            a = s.get(Adapter, adapter_id)
            if a is None or a.run_id != run_id or not may_read_adapter(who, a):
                raise NotFound(f"run {run_id} has no adapter {adapter_id} that you may read")
            owner = s.get(Provider, a.owner_id)
            return adapter_info(a, owner.name if owner else a.owner_id)

    def blob(self, run_id: str, who: Principal, adapter_id: str) -> bytes:
        info = self.get(run_id, who, adapter_id)
        return self.hub.store.get(info.blob_sha256)
