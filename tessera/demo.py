"""`tessera demo`: an embedded hub and N local worker processes train the reference model.

The hub serves real HTTP on 127.0.0.1 (SQLite and blobs under the demo's home); each worker is
a separate `tessera worker` process holding a different shard of the standard library corpus.
The processes are started by the cluster harness (``tessera.testing.cluster``); this module
holds the demo's recipes, its run, its summary and the single-process baseline. The demo trains
its own recipe, or one the user gives (``DemoSettings.recipe``), with common settings overridden
by options (``Overrides``), on the user's own machine: its hub and workers trust the factories
and the data folder the user names.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import tomli_w

from tessera.api.client import HubClient
from tessera.api.messages import LedgerReport, RoundMetrics, RunStatus
from tessera.core.inner import InnerSettings, InnerTrainer, evaluate
from tessera.errors import ConfigError, TesseraError
from tessera.recipe import Recipe, parse_recipe
from tessera.settings import read_toml
from tessera.task import build_model, load_data, loss_of
from tessera.testing.cluster import embedded_hub, start_worker, stop, wait_for_run
from tessera.trust import Trust


@dataclass(frozen=True)
class Overrides:
    """Recipe settings `tessera demo` takes as options, each set over the recipe's (None: kept)."""

    rounds: int | None = None
    inner_steps: int | None = None
    outer: str | None = None  # outer optimizer: nesterov | average
    outer_lr: float | None = None
    momentum: float | None = None
    codec: str | None = None  # of uploads
    overlap: bool | None = None

    def tables(self) -> dict[str, dict[str, Any]]:
        """The recipe keys to set, by section."""
        keys = {
            ("run", "rounds"): self.rounds,
            ("train", "inner_steps"): self.inner_steps,
            ("outer", "kind"): self.outer,
            ("outer", "lr"): self.outer_lr,
            ("outer", "momentum"): self.momentum,
            ("communication", "codec"): self.codec,
            ("communication", "overlap"): self.overlap,
        }
        tables: dict[str, dict[str, Any]] = {}
        for (section, key), value in keys.items():
            if value is not None:
                tables.setdefault(section, {})[key] = value
        return tables


@dataclass(frozen=True)
class DemoSettings:
    home: Path = Path(".tessera/demo")
    workers: int = 4
    rounds: int = 12  # rounds, inner steps and batch size: of the demo's own recipe
    inner_steps: int = 100
    batch_size: int = 16
    threads_per_worker: int = 1
    data_path: Path | None = None  # a folder of text files instead of the standard library
    collective: str | None = None  # the providers allowed to work on the run
    recipe: str | None = None  # a recipe's TOML to train instead of the demo's own
    overrides: Overrides = field(default_factory=Overrides)
    factories: tuple[str, ...] = ()  # factories the user trusts (--trust)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.rounds < 1 or self.inner_steps < 1:
            raise TesseraError("--workers, --rounds and --inner-steps must be at least 1")

    @property
    def trust(self) -> Trust:
        """What the demo's hub and workers trust: tessera's own code and the factories given with
        --trust; the --data folder, else the [data] path of the recipe given (the user chose
        both, and the demo's hub and workers are the user's own machine)."""
        roots = [self.data_path] if self.data_path else []
        if self.recipe is not None and self.data_path is None:
            path = parse_recipe(self.recipe).data.path
            roots += [Path(path)] if path else []
        return Trust.of(self.factories, roots)


EVAL = """[eval]
batch_size = 16
batches = 16
"""
OUTER_AND_EVAL = f"""[outer]
kind = "nesterov"
lr = 0.7
momentum = 0.9

{EVAL}"""
# The demo's rounds: measured best of the configurations in bench/communication.py (its arms).
DEMO_OUTER = """[outer]
kind = "nesterov"
lr = 0.7
momentum = 0.5  # few rounds: 0.9 builds up to several times the averaged change and overshoots
"""


def demo_recipe(settings: DemoSettings) -> str:
    collective_line = (
        "" if settings.collective is None else f"collective = {json.dumps(settings.collective)}\n"
    )
    data_line = (
        "" if settings.data_path is None else f"path = {json.dumps(str(settings.data_path.resolve()))}\n"
    )
    return f"""\
# Byte-level LM on the Python standard library, one domain shard per worker.
seed = 0

[run]
name = "stdlib-demo"
{collective_line}rounds = {settings.rounds}
quorum = {settings.workers}
round_deadline_s = 300
max_staleness = 1

[model]
factory = "tessera.models.lm:build"
options = {{ context = 128, d_model = 128, n_layers = 2, n_heads = 4 }}

[data]
source = "tessera.data.text:load"
{data_line}options = {{ context = 128, num_shards = {settings.workers} }}

[train]
inner_steps = {settings.inner_steps}
batch_size = {settings.batch_size}
lr = 3e-3
lr_schedule = "cosine"  # over all rounds: warm up, then down to a tenth at the last step
warmup_steps = {min(50, settings.rounds * settings.inner_steps // 10)}
weight_decay = 0.1
grad_clip = 1.0

{DEMO_OUTER}
{EVAL}"""


def run_recipe(settings: DemoSettings) -> str:
    """The recipe the demo's run trains: the one given or the demo's own, with the options'
    overrides (and the demo's collective and --data folder), checked by the recipe parser: a
    bad value is a ConfigError naming it."""
    tables = settings.overrides.tables()
    if settings.recipe is None:
        text = demo_recipe(settings)
    else:
        text = settings.recipe
        if settings.collective is not None:
            tables.setdefault("run", {})["collective"] = settings.collective
        if settings.data_path is not None:
            tables.setdefault("data", {})["path"] = str(settings.data_path.resolve())
    text = with_settings(text, tables)
    parse_recipe(text)
    return text


def with_settings(text: str, tables: Mapping[str, Mapping[str, Any]]) -> str:
    """Recipe ``text`` with the keys of ``tables`` set, section by section; without any, ``text``
    itself (its comments kept)."""
    if not tables:
        return text
    doc = read_toml(text, "recipe")
    for section, values in tables.items():
        table = doc.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        table.update(values)
    return tomli_w.dumps(doc)


def modular_recipe(domains: list[str], rounds: int, inner_steps: int, expert_steps: int | None) -> str:
    """The reference modular LM on standard-library ``domains`` (one shard each). With
    ``expert_steps``: a trunk trained with DiLoCo for ``rounds`` rounds by one worker per domain,
    then one expert per domain trained alone on top of it for ``expert_steps`` steps; without: the
    trunk's architecture alone, trained for ``rounds`` rounds (the dense comparison)."""
    from tessera.models.modular import ModularLMConfig, module_params

    experts = json.dumps(domains if expert_steps else [])
    text = f"""\
# Reference modular LM: a byte-level trunk plus one feed-forward expert per domain.
seed = 0

[run]
name = "stdlib-{"modular" if expert_steps else "dense"}"
rounds = {rounds}
quorum = {len(domains)}
round_deadline_s = 3600

[model]
factory = "tessera.models.modular:build"
options = {{ experts = {experts}, context = 128, d_model = 128, n_layers = 2, n_heads = 4 }}

[data]
options = {{ context = 128, domains = {json.dumps(domains)} }}

[train]
inner_steps = {inner_steps}
batch_size = 16
lr = 3e-3

{OUTER_AND_EVAL}"""
    if not expert_steps:
        return text
    params = module_params(ModularLMConfig(experts=tuple(domains)))
    text += f"\n[modules.trunk]\nparams = {json.dumps(params['trunk'])}\nmodel_options = {{ experts = [] }}\n"
    for d in domains:
        text += (
            f'\n[modules.{d}]\nparams = {json.dumps(params[d])}\ndepends = ["trunk"]\nshards = ["{d}"]\n'
            f'rounds = 1\nquorum = 1\ninner_steps = {expert_steps}\nmodel_options = {{ experts = ["{d}"] }}\n'
            'outer = { kind = "average" }  # one worker, one round: the new version is what it trained\n'
        )
    return text


@dataclass(frozen=True)
class BaselineResult:
    val_loss: float
    steps: int
    batch_size: int
    tokens: int
    wall_s: float


def train_baseline(
    recipe: Recipe,
    tokens: int,
    workers: int,
    on_steps: Callable[[int, int], None] | None = None,
    trust: Trust | None = None,
) -> BaselineResult:
    """One process, all training data, batch = workers x batch: the same tokens as the run.

    ``on_steps(done, total)`` is called every ``recipe.train.inner_steps`` steps.
    """
    start = time.perf_counter()
    model = build_model(recipe, trust or Trust())
    data = load_data(recipe, trust=trust or Trust())
    batch = recipe.train.batch_size * workers
    inputs, _ = next(data.train_batches(None, batch, 0))
    steps = max(tokens // inputs.numel(), 1)
    settings = InnerSettings(**{**recipe.train.__dict__, "batch_size": batch, "inner_steps": steps})
    trainer, batches = InnerTrainer(model, settings), data.train_batches(None, batch, recipe.seed + 1)
    schedule = recipe.schedule  # the run's learning rates, its nominal steps spread over ``steps``
    stride = schedule.total_steps / steps
    for done in range(0, steps, recipe.train.inner_steps):
        chunk = min(recipe.train.inner_steps, steps - done)
        lr_scale = partial(lambda first, j: schedule.lr_at((first + j) * stride), done)
        trainer.train(batches, chunk, lr_scale=lr_scale)
        if on_steps is not None:
            on_steps(done + chunk, steps)
    val = data.validation_batches(recipe.eval.batch_size, recipe.eval.batches)
    return BaselineResult(
        val_loss=evaluate(model, val, loss_of(recipe)),
        steps=steps,
        batch_size=batch,
        tokens=steps * inputs.numel(),
        wall_s=time.perf_counter() - start,
    )


def start_workers(
    url: str, run_id: str, tokens: list[str], run_dir: Path, settings: DemoSettings
) -> list[subprocess.Popen[bytes]]:
    """One `tessera worker` process per token, in this folder, each in ``run_dir``/worker-N,
    trusting what the demo's hub trusts."""
    trust = settings.trust
    options = [arg for root in trust.data_roots for arg in ("--data-root", str(root.resolve()))]
    options += [arg for spec in sorted(trust.factories) for arg in ("--trust", spec)]
    return [
        start_worker(
            (url, token, run_id),
            run_dir / f"worker-{i}",
            *options,
            name=f"worker-{i}",
            threads=settings.threads_per_worker,
            cwd=Path.cwd(),
        )  # fmt: skip
        for i, token in enumerate(tokens)
    ]


@dataclass(frozen=True)
class DemoRun:
    run_id: str
    run_dir: Path
    status: RunStatus
    rounds: list[RoundMetrics]
    wall_s: float
    ledger: LedgerReport


def run_demo(
    settings: DemoSettings,
    on_start: Callable[[str, str], None],
    on_status: Callable[[RunStatus], None],
) -> DemoRun:
    """Embedded hub, one run of the demo's recipe (``run_recipe``), worker processes until the
    run finishes."""
    start = time.perf_counter()
    # the demo's workers are this machine's own processes: their claims are not replayed
    hub = embedded_hub(settings.home, settings.trust, replay=False)
    with hub as (url, admin), HubClient.connect(url, admin) as client:
        collective = f"demo-{uuid.uuid4().hex[:8]}"
        client.create_provider(collective, kind="collective")
        tokens = []
        for i in range(settings.workers):
            worker = client.create_provider(f"{collective}-worker-{i}")
            client.add_member(collective, worker.provider.provider_id)
            tokens.append(worker.token)
        recipe_text = run_recipe(replace(settings, collective=collective))
        created = client.create_run(recipe_text)
        run_dir = settings.home / "runs" / created.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.toml").write_text(recipe_text)
        on_start(url, created.run_id)
        procs = start_workers(url, created.run_id, tokens, run_dir, settings)
        try:
            final = wait_for_run(client, created.run_id, procs, on_status)
        finally:
            stop(procs)
        rounds = client.rounds(created.run_id)
        ledger = client.ledger()
    ledger.providers = [b for b in ledger.providers if b.name.startswith(collective)]
    ledger.collectives = [b for b in ledger.collectives if b.name == collective]
    return DemoRun(created.run_id, run_dir, final, rounds, time.perf_counter() - start, ledger)


@dataclass
class DemoSummary:
    run_id: str
    final_val_loss: float | None
    initial_val_loss: float | None
    rounds: int
    workers: int
    bytes_up: int
    bytes_down: int
    tokens: int
    wall_s: float
    per_round: list[dict[str, object]]
    baseline: dict[str, float | int] | None = None


def summarize(run: DemoRun, workers: int) -> DemoSummary:
    status, rounds = run.status, run.rounds
    return DemoSummary(
        run_id=status.run_id,
        final_val_loss=status.latest_version.val_loss if status.latest_version else None,
        initial_val_loss=status.initial_val_loss,
        rounds=status.rounds_done,
        workers=workers,
        bytes_up=sum(r.bytes_in for r in rounds),
        bytes_down=sum(r.bytes_out for r in rounds),
        tokens=sum(r.tokens for r in rounds),
        wall_s=run.wall_s,
        per_round=[r.model_dump() for r in rounds],
    )
