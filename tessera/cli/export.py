"""`tessera sample` and `tessera export`: use a run's model, from a hub or a hub's folder.

Both build the model from the run's latest version (of each module it needs) with factories
this machine trusts. Tokens are bytes, or the run's tokenizer: the recipe's ``tokenizer`` data
option found under its data folder here, or the file ``--tokenizer`` names.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import torch
import typer

from tessera.api.messages import AdapterInfo, RunStatus, VersionInfo
from tessera.cli.app import HOME, HomeOpt, HubOpt, ReadTokenOpt, RunOpt, TrustOpt, app, console
from tessera.cli.read import RunReader, pick_run, reader
from tessera.cli.tables import fmt_loss
from tessera.data.tokens import Tokens
from tessera.errors import ConfigError, TesseraError
from tessera.recipe import Recipe

ExpertOpt = Annotated[
    list[str] | None,
    typer.Option("--expert", help="Experts to use (repeat; default: all, routed); others are left out"),
]
AdapterOpt = Annotated[
    str | None, typer.Option(help="An adapter's id (`tessera finetune`): merged into its base version")
]
TokenizerOpt = Annotated[
    Path | None,
    typer.Option(help="The run's tokenizer.json (default: the recipe's, if its data folder is here)"),
]


@app.command()
def sample(
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: ReadTokenOpt = None,
    prompt: str = "def ",
    length: Annotated[int, typer.Option(help="Tokens to generate (bytes, for a byte-level run)")] = 300,
    temperature: float = 0.7,
    seed: int = 0,
    expert: ExpertOpt = None,
    adapter: AdapterOpt = None,
    tokenizer: TokenizerOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Generate text from the run's latest version (any causal LM: tessera's, transformers', yours)."""
    from tessera.recipe import parse_recipe
    from tessera.sampling import sample as generate

    with closing(reader(hub_url, token, home)) as source:
        run_id = pick_run(source, run)
        found = source.adapter(run_id, adapter) if adapter else None
        model, info, versions = latest_model(source, run_id, expert, trust, found)
    recipe = parse_recipe(info.recipe)
    tokens = run_tokens(recipe, tokenizer)
    text = generate(model, tokens, prompt, length, context_of(recipe), temperature, seed)
    console.print(f"[dim]run {run_id}, {versions}[/dim]")
    console.print(text, markup=False, highlight=False)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="safetensors file (--format safetensors) or folder (hf)")],
    hub_url: HubOpt = None,
    home: HomeOpt = HOME / "demo",
    run: RunOpt = None,
    token: ReadTokenOpt = None,
    format: Annotated[
        str,
        typer.Option(help="hf: a folder Hugging Face tools load; safetensors: one file (default: by OUT)"),
    ] = "auto",
    license: Annotated[str, typer.Option(help="Licence id for the model card (e.g. apache-2.0)")] = "other",
    expert: ExpertOpt = None,
    adapter: AdapterOpt = None,
    tokenizer: TokenizerOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Write the run's latest model: a folder with config, weights, tokenizer, model card and
    lineage (--format hf), or one safetensors file whose metadata holds the recipe."""
    from tessera.core.tensors import to_bytes
    from tessera.export import lineage_of, write_folder
    from tessera.recipe import parse_recipe
    from tessera.task import model_tensors

    if format not in ("auto", "hf", "safetensors"):
        raise ConfigError(f"--format must be hf or safetensors, got {format!r}")
    if format == "auto":
        format = "safetensors" if out.suffix == ".safetensors" else "hf"
    with closing(reader(hub_url, token, home)) as source:
        run_id = pick_run(source, run)
        found = source.adapter(run_id, adapter) if adapter else None
        model, info, versions = latest_model(source, run_id, expert, trust, found)
        history = all_versions(source, info) if format == "hf" else []
        credits = source.credits(run_id) if format == "hf" else []
        on_datasets = format == "hf" and bool(parse_recipe(info.recipe).data.datasets) and not info.modules
        commons = source.lineage(run_id) if on_datasets else None  # a modular run's: per module
    if format == "safetensors":
        metadata = {"recipe": info.recipe, "run_id": run_id, "versions": versions}
        metadata["experts"] = json.dumps(expert)
        out.write_bytes(to_bytes(model_tensors(model), metadata))
        console.print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): run {run_id}, {versions}")
        return
    recipe = parse_recipe(info.recipe)
    lineage = lineage_of(info, history, credits)
    lineage.commons = commons.model_dump(mode="json") if commons is not None else None
    if found is not None:
        lineage.adapter = found.model_dump(mode="json")
        lineage.base = {"run_id": run_id, "version": found.base_version, "version_id": found.base_version_id}
    files = write_folder(out, model, info.recipe, lineage, license, tokenizer_path(recipe, tokenizer))
    console.print(f"wrote {out}: {', '.join(files)}; run {run_id}, {versions}", soft_wrap=True)


def all_versions(source: RunReader, info: RunStatus) -> list[VersionInfo]:
    """Every version of a run that is not modular, from the first to the latest."""
    if info.latest_version is None:
        return []
    return [source.version(info.run_id, n) for n in range(info.latest_version.number + 1)]


def context_of(recipe: Recipe) -> int:
    context = recipe.data.options.get("context", 128)
    return int(context) if isinstance(context, int) else 128


def tokenizer_path(recipe: Recipe, given: Path | None) -> Path | None:
    """The run's tokenizer file here: ``given``, or the recipe's under its data folder; None for
    a byte-level run. ConfigError when the run has one that is not here."""
    from tessera.data.tokens import tokenizer_file

    if given is not None:
        return tokenizer_file(str(given), None)
    name = recipe.data.options.get("tokenizer")
    if not isinstance(name, str):
        return None
    try:
        return tokenizer_file(name, Path(recipe.data.path) if recipe.data.path else None)
    except TesseraError as exc:
        raise ConfigError(f"the run's tokenizer {name!r} is not here; pass --tokenizer FILE") from exc


def run_tokens(recipe: Recipe, given: Path | None) -> Tokens:
    from tessera.data.tokens import ByteTokens, FileTokens

    path = tokenizer_path(recipe, given)
    return ByteTokens() if path is None else FileTokens(path)


def adapted(
    source: RunReader, info: RunStatus, adapter: AdapterInfo, trust: list[str] | None
) -> torch.nn.Module:
    """The adapter's base version of the run with the adapter merged in."""
    from tessera.core.tensors import from_bytes
    from tessera.finetune import apply_adapter
    from tessera.recipe import parse_recipe
    from tessera.task import assemble
    from tessera.trust import Trust

    if info.modules:
        raise ConfigError("adapters are of runs that are not modular")
    base = source.version(info.run_id, adapter.base_version)
    weights = from_bytes(source.blob(info.run_id, base.blob_sha256))
    model = assemble(parse_recipe(info.recipe), [weights], None, Trust.of(trust or []))
    tensors = from_bytes(source.adapter_blob(info.run_id, adapter.adapter_id))
    return apply_adapter(model, tensors, adapter.rank, adapter.alpha, adapter.target_modules)


def adapter_versions(adapter: AdapterInfo) -> str:
    losses = f"{fmt_loss(adapter.base_loss)} -> {fmt_loss(adapter.adapter_loss)}"
    return (
        f"version {adapter.base_version} with adapter {adapter.name} v{adapter.number} "
        f"(held-out loss on its owner's data {losses})"
    )


def latest_model(
    source: RunReader,
    run_id: str,
    experts: list[str] | None,
    trust: list[str] | None = None,
    adapter: AdapterInfo | None = None,
) -> tuple[torch.nn.Module, RunStatus, str]:
    """The run's model from the latest version of each module it needs (modules of experts left
    out are not downloaded), or with ``adapter`` that adapter's base version with it merged in;
    the run's status, and which versions those are; built only from factories this machine
    trusts (tessera's own and ``trust``)."""
    from tessera.core.modules import assign
    from tessera.core.tensors import from_bytes
    from tessera.recipe import parse_recipe
    from tessera.task import assemble, with_experts
    from tessera.trust import Trust

    info = source.status(run_id)
    if adapter is not None:
        if experts:
            raise ConfigError("adapters are of runs that are not modular; leave out --expert")
        return adapted(source, info, adapter, trust), info, adapter_versions(adapter)
    recipe = parse_recipe(info.recipe)
    trusted = Trust.of(trust or [])
    parts = [info]
    if info.modules:
        model = with_experts(recipe, experts, trusted)
        needed = set(assign(recipe.modules, model.state_dict(), every_module=False).values())
        parts = [m for m in info.modules if m.module in needed]
    tensors = []
    for part in parts:
        assert part.latest_version is not None  # set for every run that is not modular
        tensors.append(from_bytes(source.blob(part.run_id, part.latest_version.blob_sha256)))
    versions = ", ".join(
        f"{p.module or 'version'} {v.number} (held-out loss {fmt_loss(v.val_loss)})"
        for p in parts
        if (v := p.latest_version) is not None
    )
    return assemble(recipe, tensors, experts, trusted), info, versions
