"""A hub's own configuration: what code and data it trusts, and the limits it holds providers to.

Read from a TOML file (``tessera hub --config FILE``), every key optional:

    [trust]
    factories = ["mypackage.models:build"]   # beyond tessera's own and declared entry points
    data_roots = ["/srv/tessera-data"]        # folders a recipe's [data] path may point into
    entry_points = true

    [limits]                                  # per provider; hub admins are exempt but for size
    max_model_bytes = 2147483648              # one run's parameters and buffers (meta device)
    ...                                       # the other fields of HubLimits

    [api]
    docs = "token"                            # /openapi.json: "token" (needs one), "public", "off"

    [pool]                                    # fair share (tessera.pool.fairshare) and placement
    half_life_s = 604800                      # ...the other fields of PoolSettings

    [verify]                                  # replaying workers' claims (tessera.hub.verify)
    fraction = 0.1                            # ...the other fields of VerifySettings

Limits counted in memory (waiting leases, probe bytes) hold per hub process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tessera.errors import ConfigError
from tessera.pool.fairshare import DAY_S, FairShareSettings
from tessera.settings import from_table, read_toml
from tessera.trust import Trust

MIB = 1 << 20
GIB = 1 << 30
ApiDocs = Literal["token", "public", "off"]


@dataclass(frozen=True)
class HubLimits:
    max_model_bytes: int = 2 * GIB  # one run's models (a 500M-parameter fp32 model; modular: all)
    max_provider_model_bytes: int = 4 * GIB  # a provider's active runs together
    max_active_runs: int = 8  # active runs one provider owns
    max_workers: int = 64  # workers one provider registers in one run (a torchrun worker: its ranks)
    max_ranks: int = 64  # torchrun ranks one worker may declare
    max_waiting_leases: int = 32  # lease requests of one provider waiting at once
    max_probe_bytes_per_hour: int = 2 * GIB  # bandwidth-probe bytes one provider moves, per hour
    max_recipe_bytes: int = 256 * 1024
    cached_runtimes: int = 8  # runs whose model and held-out data the hub keeps in memory
    close_timeout_s: int = 600  # a round closing longer (its hub process died) is closed again
    max_assessing: int = 2  # uploads decoded and checked at once (each holds ~3x its model's fp32 size)
    max_dataset_file_bytes: int = 256 * MIB  # one file of a dataset version (held in memory on upload)
    max_provider_dataset_bytes: int = 64 * GIB  # the files of a provider's dataset versions together
    max_provider_datasets: int = 100_000  # dataset versions one provider registers (private ones too)

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TrustSection:
    factories: list[str] = field(default_factory=list)
    data_roots: list[str] = field(default_factory=list)
    entry_points: bool = True


@dataclass(frozen=True)
class ApiSection:
    docs: ApiDocs = "token"

    def __post_init__(self) -> None:
        if self.docs not in ("token", "public", "off"):
            raise ConfigError(f"api.docs must be 'token', 'public' or 'off', got {self.docs!r}")


@dataclass(frozen=True)
class PoolSettings:
    """How the hub shares its pool of workers among runs."""

    half_life_s: float = 7 * DAY_S  # of credit and usage in fair share
    pflop_per_point: float = 1.0  # balance that doubles a run's weight
    min_share: float = 0.05  # of the pool for every account with work waiting
    min_stay_s: float = 600.0  # a pool worker stays at least this long on a run (bounded preemption)
    member_timeout_s: float = 3600.0  # a pool worker not heard of for this long is gone
    idle_retry_s: float = 30.0  # a pool worker with nothing to do asks again after this
    window_margin_s: float = 30.0  # a lease stops this long before its worker's window ends, to upload

    def __post_init__(self) -> None:
        FairShareSettings(self.half_life_s, self.pflop_per_point, self.min_share)  # checks them
        for name in ("min_stay_s", "member_timeout_s", "idle_retry_s", "window_margin_s"):
            value = getattr(self, name)
            if not 0.0 <= value <= 30 * DAY_S:
                raise ConfigError(f"pool.{name} must be from 0 to 30 days in seconds, got {value}")

    @property
    def fair_share(self) -> FairShareSettings:
        return FairShareSettings(self.half_life_s, self.pflop_per_point, self.min_share)


@dataclass(frozen=True)
class VerifySettings:
    """How the hub checks workers' claims by replaying their work (``tessera.hub.verify``)."""

    fraction: float = 0.1  # of a trusted worker's replayable contributions replayed
    trust_after: int = 2  # a worker's first contributions are all replayed, until this many held
    gain_min: float = 0.1  # of the replay's loss gain on the lease's batches an upload must make

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"verify.fraction must be from 0 to 1, got {self.fraction}")
        if isinstance(self.trust_after, bool) or not 0 <= self.trust_after <= 1000:
            raise ConfigError(f"verify.trust_after must be from 0 to 1000, got {self.trust_after}")
        if not 0.0 < self.gain_min <= 1.0:
            raise ConfigError(f"verify.gain_min must be above 0 and at most 1, got {self.gain_min}")


@dataclass(frozen=True)
class HubConfig:
    trust: Trust = field(default_factory=Trust)
    limits: HubLimits = field(default_factory=HubLimits)
    api_docs: ApiDocs = "token"
    pool: PoolSettings = field(default_factory=PoolSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)


def load_hub_config(path: Path | None, factories: list[str], data_roots: list[str]) -> HubConfig:
    """The configuration in ``path`` (if any), with ``--trust`` and ``--data-root`` added."""
    doc = read_toml(path.read_text(), f"hub configuration {path}") if path is not None else {}
    unknown = sorted(set(doc) - {"trust", "limits", "api", "pool", "verify"})
    if unknown:
        raise ConfigError(f"unknown sections {unknown} in {path}; allowed: api, limits, pool, trust, verify")
    trust = from_table("trust", TrustSection, doc.get("trust", {}))
    return HubConfig(
        trust=Trust(
            frozenset([*trust.factories, *factories]),
            tuple(Path(p) for p in [*trust.data_roots, *data_roots]),
            trust.entry_points,
        ),
        limits=from_table("limits", HubLimits, doc.get("limits", {})),
        api_docs=from_table("api", ApiSection, doc.get("api", {})).docs,
        pool=from_table("pool", PoolSettings, doc.get("pool", {})),
        verify=from_table("verify", VerifySettings, doc.get("verify", {})),
    )
