"""`tessera finetune`: fine-tune a run's latest version on your own data with LoRA, here, and
keep the adapter at the hub (private to you unless --share); the data never leaves."""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from tessera.cli.app import DEFAULT_HUB_URL, HubUrl, JsonFlag, TokenOpt, TrustOpt, app, console
from tessera.errors import ConfigError
from tessera.recipe import Recipe

SourceOpt = Annotated[
    str | None,
    typer.Option(help="Data source for --data (default: the run's), e.g. tessera.data.records:load"),
]


@app.command()
def finetune(
    run: Annotated[str, typer.Option("--run", help="The run whose latest version you adapt")],
    data: Annotated[Path, typer.Option(help="Your own data: a folder, or a .jsonl / .parquet file")],
    token: TokenOpt,
    hub_url: HubUrl = DEFAULT_HUB_URL,
    name: Annotated[str, typer.Option(help="The adapter's name (a new version each time)")] = "finetune",
    source: SourceOpt = None,
    text_field: Annotated[str, typer.Option(help="With tessera.data.records:load: the text field")] = "text",
    steps: int = 200,
    rank: int = 8,
    alpha: float = 16.0,
    lr: float = 2e-3,
    batch_size: int = 16,
    share: Annotated[bool, typer.Option("--share", help="Let the run's readers use it")] = False,
    trust: TrustOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Fine-tune the run's latest version on --data with LoRA adapters and upload the adapter."""
    from tessera.api.client import HubClient
    from tessera.api.messages import AdapterMeta
    from tessera.cli.export import latest_model
    from tessera.cli.read import RemoteReader
    from tessera.core.tensors import to_bytes
    from tessera.finetune import LoraSettings, fingerprint
    from tessera.finetune import finetune as train
    from tessera.recipe import parse_recipe
    from tessera.task import load_data, loss_of
    from tessera.trust import Trust

    settings = LoraSettings(rank=rank, alpha=alpha, steps=steps, lr=lr, batch_size=batch_size)
    with closing(RemoteReader(hub_url, token)) as reader:  # open while the version is downloaded
        model, info, versions = latest_model(reader, run, None, trust)
    if info.latest_version is None:
        raise ConfigError(f"run {run} is modular; fine-tune one of its modules' runs (--run MODULE-RUN-ID)")
    recipe = own_data_recipe(parse_recipe(info.recipe), source, text_field)
    own = load_data(recipe, str(data), Trust.of(trust or []))
    if not json_out:
        console.print(f"adapting {versions} of run {run} on {data} ({steps} steps, rank {rank})")
    result = train(model, own, loss_of(recipe), settings)
    body = to_bytes(result.tensors)
    meta = AdapterMeta(
        name=name,
        base_version=info.latest_version.number,
        rank=rank,
        alpha=alpha,
        target_modules=result.targets,
        data_fingerprint=fingerprint(own),
        data_tokens=result.tokens,
        steps=result.steps,
        base_loss=result.base_loss,
        adapter_loss=result.adapter_loss,
        shared=share,
    )
    with HubClient.connect(hub_url, token) as client:
        adapter = client.upload_adapter(run, meta, body)
    if json_out:
        print(json.dumps(adapter.model_dump(mode="json")))
        return
    console.print(
        f"held-out loss on your data {result.base_loss:.4f} -> {result.adapter_loss:.4f}; adapter "
        f"{adapter.name} v{adapter.number} ({len(body) / 1e6:.2f} MB, {'shared' if share else 'private'}): "
        f"{adapter.adapter_id}",
        soft_wrap=True,
    )
    console.print(
        f"use it with: tessera sample --hub {hub_url} --run {run} --adapter {adapter.adapter_id}",
        soft_wrap=True,
    )


def own_data_recipe(recipe: Recipe, source: str | None, text_field: str) -> Recipe:
    """The run's recipe reading one's own data in one shard: the run's source and context, or
    ``source`` with the options every text source shares."""
    if source is None:
        options = {k: v for k, v in recipe.data.options.items() if k != "domains"}
    else:
        shared = ("context", "tokenizer", "held_out_fraction")
        options = {k: v for k, v in recipe.data.options.items() if k in shared}
        if source == "tessera.data.records:load":
            options["text_field"] = text_field
    options["num_shards"] = 1
    data = replace(recipe.data, source=source or recipe.data.source, path=None, options=options)
    return replace(recipe, data=data)
