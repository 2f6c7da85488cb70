"""Run recipes: a TOML file naming the model, the data and the algorithm settings.

[run]    name, collective, rounds, quorum (a count of contributions, or a fraction in (0, 1) of the
         run's active workers), round_deadline_s, deadline_k (0: off; else the deadline adapts to
         how long the last rounds' work took to arrive), lease_timeout_s, max_staleness,
         balance_steps, staleness_decay, priority (in the pool's fair share, -10 to 10), workers
         (pool workers it can use; 0: its quorum, or no bound for a fractional one), use
         ("research" | "commercial": the datasets' licences must allow it), fork_of and
         fork_version (start from another run's version: a fork, kept in the lineage)
[model]  factory = "package.module:function", options = {...}
[data]   source = "package.module:function", path = "...", options = {...}; or
         datasets = { <dataset version id> = weight, ... } (the hub's commons; tessera.data.mixture)
[train]  inner_steps, batch_size, lr, weight_decay, grad_clip, loss; over the whole run
         (tessera.core.schedule): inner_steps_by_round = [H of round 0, H of round 1, ...] (the
         sync schedule; later rounds take inner_steps), lr_schedule = "constant" | "cosine",
         warmup_steps, final_lr_fraction
[outer]  kind = "nesterov" | "average", lr, momentum
[eval]   batch_size, batches
[communication]  codec (and download_codec) = "fp32" | "bf16" | "fp16" | "int8" | "int4" | "int3" |
         "int2" | "sign" | "topk<percent>",
         error_feedback = true
[plan]   inner_steps = { worker-name = H, ... } (from `tessera plan`, scaled by each round's H in
         the sync schedule over train.inner_steps; others take the round's H),
         topology = "name of the planned topology"
[modules.<name>]  params = [patterns], depends, shards, owner, model_options, rounds, quorum,
         inner_steps, outer: separately versioned parts of the model (tessera.core.modules)

A recipe arrives from the network, so every value is checked before anything uses it
(``tessera.settings``: declared types, finite and bounded numbers, printable text, shallow
nesting), and ``[run]`` and ``[model]`` must be present (an empty recipe is refused).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tessera.core.codecs import CommunicationSettings
from tessera.core.inner import MAX_INNER_STEPS, InnerSettings
from tessera.core.modules import ModuleSpec, parse_modules
from tessera.core.outer import OuterSettings
from tessera.core.robust import AggregationSettings
from tessera.core.schedule import RunSchedule
from tessera.core.validation import ValidationSettings
from tessera.data.licences import check_use
from tessera.errors import ConfigError
from tessera.settings import check_range, from_table, read_toml

MAX_ROUNDS = 100_000
MAX_QUORUM = 10_000
MAX_WAIT_S = 30 * 24 * 3600.0  # deadlines and lease timeouts: at most 30 days
MAX_EVAL_EXAMPLES = 16_384  # held-out examples the hub evaluates each version on
MAX_DEADLINE_K = 100.0
MAX_PRIORITY = 10.0
MAX_DATASETS = 64
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REQUIRED_SECTIONS = ("run", "model")


def quorum_count(quorum: int | float, active_workers: int) -> int:
    """The contributions that close a round: an integer quorum itself; a fraction of the active
    workers, rounded up, at least 1 (a product a float's rounding puts a hair above an integer
    counts as that integer: 0.1 x 30 workers is 3, not 4)."""
    if isinstance(quorum, int):
        return quorum
    return max(1, math.ceil(quorum * active_workers - 1e-9))


def check_quorum(where: str, quorum: object) -> None:
    """ConfigError unless ``quorum`` is an integer from 1 to MAX_QUORUM or a float in (0, 1)."""
    if isinstance(quorum, bool) or not isinstance(quorum, int | float):
        raise ConfigError(
            f"{where} must be a count of contributions (an integer, e.g. 4) or a fraction of the "
            f"run's active workers (a number between 0 and 1, e.g. 0.5), got {quorum!r}"
        )
    if isinstance(quorum, int):
        check_range(where, quorum, 1, MAX_QUORUM)
    elif not 0 < quorum < 1:
        raise ConfigError(
            f"{where} = {quorum}: a fraction of the active workers must be above 0 and below 1; "
            f"for a count of contributions write an integer (e.g. {where} = 4)"
        )


def check_number(where: str, value: object, low: float, high: float) -> None:
    """ConfigError unless ``value`` is an integer or float (a bool is not) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number from {low:g} to {high:g}, got {value!r}")
    check_range(where, value, low, high)


@dataclass(frozen=True)
class RunSettings:
    """How a run's rounds go. ``quorum``: the accepted contributions that close a round, as a count
    (int) or as a fraction (float in (0, 1)) of the run's active workers, the distinct workers
    leased in the round or the round before whose first work has arrived, so the pace holds as
    workers come and go (the hub counts them: ``tessera.hub.queries.active_workers``).
    ``deadline_k`` > 0 adapts the round deadline to median + k x MAD of the last rounds' arrival
    times (``tessera.hub.rounds``), within ``round_deadline_s``."""

    name: str = "run"
    collective: str | None = None  # who may work on the run: members of this collective
    rounds: int = 10
    quorum: int | float = 4
    round_deadline_s: float = 600.0
    deadline_k: float = 0.0  # 0: the deadline is round_deadline_s; else adaptive (see above)
    lease_timeout_s: float = 1800.0
    max_staleness: int = 1
    staleness_decay: float = 0.5
    balance_steps: bool = False  # size each worker's H from its measured step time
    # the run's own priority in the pool: added to its owner's fair-share score (tessera.pool.fairshare)
    priority: float = 0.0
    workers: int = 0  # pool workers the run can use (0: its quorum; a fractional one: no bound)
    use: str = "research"  # what the model is for: research | commercial (datasets' licences must allow it)
    fork_of: str | None = None  # a run whose version ``fork_version`` this run starts from
    fork_version: int = 0

    def __post_init__(self) -> None:
        check_use(self.use)
        if self.fork_of is not None and not re.fullmatch(r"[0-9a-f]{32}", self.fork_of):
            raise ConfigError(f"run.fork_of must be a run id (32 hex digits), got {self.fork_of[:40]!r}")
        check_range("run.fork_version", self.fork_version, 0, MAX_ROUNDS)
        if not 1 <= len(self.name) <= 200:
            raise ConfigError("run.name must have 1 to 200 characters")
        check_range("run.rounds", self.rounds, 1, MAX_ROUNDS)
        check_quorum("run.quorum", self.quorum)
        check_range("run.round_deadline_s", self.round_deadline_s, 1e-3, MAX_WAIT_S)
        check_number("run.deadline_k", self.deadline_k, 0, MAX_DEADLINE_K)
        check_range("run.lease_timeout_s", self.lease_timeout_s, 1e-3, MAX_WAIT_S)
        check_range("run.max_staleness", self.max_staleness, 0, MAX_ROUNDS)
        if not 0 < self.staleness_decay <= 1:
            raise ConfigError(f"run.staleness_decay must be in (0, 1], got {self.staleness_decay}")
        check_number("run.priority", self.priority, -MAX_PRIORITY, MAX_PRIORITY)
        check_range("run.workers", self.workers, 0, MAX_QUORUM)

    @property
    def elastic(self) -> bool:
        """Whether the quorum is a fraction of the active workers (else a count)."""
        return isinstance(self.quorum, float)

    @property
    def min_quorum(self) -> int:
        """The quorum as a count known without the hub's database: an integer quorum itself; for a
        fraction 1, the least it can be (a round may close on one contribution, and a part of
        1 / min_quorum in the round's average is the most any one upload can have)."""
        return quorum_count(self.quorum, 1)

    def quorum_for(self, active_workers: int) -> int:
        """The quorum of a round with ``active_workers`` active workers."""
        return quorum_count(self.quorum, active_workers)


@dataclass(frozen=True)
class ModelSpec:
    factory: str = "tessera.models.lm:build"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from: a source factory reading ``path`` (or a worker's own folder),
    or dataset versions of the hub's commons by id, with their mixing weights (``datasets``)."""

    source: str = "tessera.data.text:load"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, float] = field(default_factory=dict)  # dataset version id -> weight

    def __post_init__(self) -> None:
        if len(self.datasets) > MAX_DATASETS:
            raise ConfigError(f"data.datasets names at most {MAX_DATASETS} dataset versions")
        for dataset_id, weight in self.datasets.items():
            if not SHA256_RE.match(dataset_id):
                raise ConfigError(
                    f"data.datasets: {dataset_id[:70]!r} is not a dataset version id (64 hex digits)"
                )
            check_number(f"data.datasets.{dataset_id[:12]}", weight, 1e-6, 1e6)
        if self.datasets and self.path is not None:
            raise ConfigError("a recipe reads data.path or names data.datasets, not both")


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 16
    batches: int = 8

    def __post_init__(self) -> None:
        check_range("eval.batch_size", self.batch_size, 1, 1024)
        check_range("eval.batches", self.batches, 1, 1024)
        if self.batch_size * self.batches > MAX_EVAL_EXAMPLES:
            raise ConfigError(
                f"eval.batch_size x eval.batches must be at most {MAX_EVAL_EXAMPLES} (the hub evaluates "
                f"every version on them), got {self.batch_size * self.batches}"
            )


@dataclass(frozen=True)
class PlanSection:
    """Inner steps per worker name, so fast and slow workers finish a round together."""

    topology: str = ""
    inner_steps: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.inner_steps, dict):
            raise ConfigError("plan.inner_steps must be a table of worker name = steps")
        for name, steps in self.inner_steps.items():
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_INNER_STEPS:
                raise ConfigError(
                    f"plan.inner_steps.{name} must be an integer from 1 to {MAX_INNER_STEPS}, got {steps!r}"
                )


@dataclass(frozen=True)
class Recipe:
    run: RunSettings = field(default_factory=RunSettings)
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: InnerSettings = field(default_factory=InnerSettings)
    outer: OuterSettings = field(default_factory=OuterSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    communication: CommunicationSettings = field(default_factory=CommunicationSettings)
    plan: PlanSection = field(default_factory=PlanSection)
    modules: dict[str, ModuleSpec] = field(default_factory=dict)
    seed: int = 0

    @property
    def schedule(self) -> RunSchedule:
        """The run's rounds laid end to end: each round's H and the inner learning rate at each
        of its steps (``tessera.core.schedule``)."""
        t = self.train
        by_round = tuple(t.inner_steps_by_round)
        return RunSchedule(
            t.inner_steps, by_round, self.run.rounds, t.lr_schedule, t.warmup_steps, t.final_lr_fraction
        )

    def for_module(self, name: str) -> Recipe:
        """The recipe as module ``name`` trains: its rounds, quorum, H and model options."""
        spec = self.modules[name]
        try:
            outer = from_table(f"modules.{name}.outer", OuterSettings, {**asdict(self.outer), **spec.outer})
        except ConfigError as exc:
            raise ConfigError(f"modules.{name}.outer: {exc}") from exc
        module = replace(
            self,
            run=replace(
                self.run, rounds=spec.rounds or self.run.rounds, quorum=spec.quorum or self.run.quorum
            ),
            train=self.train
            if not spec.inner_steps
            else replace(  # a module's own H: no list
                self.train, inner_steps=spec.inner_steps, inner_steps_by_round=[]
            ),
            model=replace(self.model, options={**self.model.options, **spec.model_options}),
            outer=outer,
        )
        check_schedule(module, f"module {name}")
        return module


SECTIONS: dict[str, type] = {
    "run": RunSettings,
    "model": ModelSpec,
    "data": DataSpec,
    "train": InnerSettings,
    "outer": OuterSettings,
    "eval": EvalSettings,
    "validation": ValidationSettings,
    "aggregation": AggregationSettings,
    "communication": CommunicationSettings,
    "plan": PlanSection,
}


def parse_recipe(text: str) -> Recipe:
    """Parse recipe TOML; every problem raises ConfigError naming the key to fix."""
    doc = read_toml(text, "recipe")
    unknown = sorted(set(doc) - set(SECTIONS) - {"seed", "modules"})
    if unknown:
        raise ConfigError(f"unknown recipe sections {unknown}; allowed: {sorted(SECTIONS)}")
    missing = [name for name in REQUIRED_SECTIONS if name not in doc]
    if missing:
        raise ConfigError(
            f"the recipe has no {' or '.join(f'[{m}]' for m in missing)} section; a recipe names at "
            'least its run and its model: [run] name = "my-run", [model] factory = "tessera.models.lm:build"'
        )
    parts = {name: from_table(name, cls, doc.get(name, {})) for name, cls in SECTIONS.items()}
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    recipe = Recipe(seed=seed, modules=parse_modules(doc.get("modules", {})), **parts)
    check_schedule(recipe, "the run")
    for name in recipe.modules:
        recipe.for_module(name)  # a module's own settings are checked now
    return recipe


def check_schedule(recipe: Recipe, where: str) -> None:
    """ConfigError unless the sync schedule fits the rounds (of ``where``: the run, or a module)
    and the warm-up ends before the run's last step."""
    listed, rounds = len(recipe.train.inner_steps_by_round), recipe.run.rounds
    if listed > rounds:
        raise ConfigError(
            f"train.inner_steps_by_round lists {listed} rounds but {where} has {rounds} "
            "(its rounds); shorten the list or raise the rounds"
        )
    total = recipe.schedule.total_steps
    if recipe.train.warmup_steps >= total:
        raise ConfigError(
            f"train.warmup_steps = {recipe.train.warmup_steps} does not end before the last of the "
            f"{total} inner steps of {where} (rounds x H); lower it"
        )


def load_recipe(path: Path) -> Recipe:
    if not path.is_file():
        raise ConfigError(f"recipe file {path} not found")
    return parse_recipe(path.read_text())


def with_plan(
    recipe_text: str, topology: str, inner_steps: dict[str, int], wire_format: str | None = None
) -> str:
    """The recipe with a [plan] section appended (refused if it has one already), and, unless the
    recipe chose its own [communication], the plan's wire format for both directions."""
    doc = read_toml(recipe_text, "recipe")
    if "plan" in doc:
        raise ConfigError("the recipe has a [plan] section already; remove it or leave out --plan")
    steps = ", ".join(f"{json.dumps(name)} = {int(h)}" for name, h in inner_steps.items())
    text = (
        f"{recipe_text.rstrip()}\n\n[plan]\ntopology = {json.dumps(topology)}\ninner_steps = {{ {steps} }}\n"
    )
    if wire_format is not None and "communication" not in doc:
        fmt = json.dumps(wire_format)
        text += f"\n[communication]\ncodec = {fmt}\ndownload_codec = {fmt}\n"
    parse_recipe(text)
    return text
