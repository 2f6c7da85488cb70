"""Exported models: a folder that Hugging Face tools load, with a model card and the lineage.

``write_folder`` writes, for every model, ``tessera.json`` (the recipe and where the weights
came from), ``README.md`` (a model card whose metadata block Hugging Face reads: licence,
datasets, base model, tags) and ``lineage.json`` (the run, every version back to the first, the
data the recipe names and the providers credited for the compute). A ``transformers`` model is
written with its own ``save_pretrained`` (``config.json``, ``model.safetensors``), so
``AutoModelForCausalLM.from_pretrained(folder)`` loads it; any other model as
``model.safetensors`` of its state dict, which ``load_exported`` rebuilds from the recipe.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tessera.api.messages import Balance, RunStatus, VersionInfo
from tessera.core.tensors import from_bytes, to_bytes
from tessera.errors import ConfigError
from tessera.recipe import Recipe, parse_recipe
from tessera.trust import Trust

WEIGHTS = "model.safetensors"
MANIFEST = "tessera.json"
NO_ROWS = "| - | - | - | - | - |\n"


def hf_model_of(model: nn.Module) -> Any | None:
    """The ``transformers`` model inside ``model`` (tessera's wrapper or the model itself)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    for candidate in (model, getattr(model, "model", None)):
        if isinstance(candidate, PreTrainedModel):
            return candidate
    return None


@dataclass
class Lineage:
    """Where a model came from: the run, its versions from the first, the data the recipe names,
    the providers credited for its compute, and (for an adapter) the base it adapts."""

    run: dict[str, Any]
    versions: list[dict[str, Any]]
    data: dict[str, Any]
    contributors: list[dict[str, Any]]
    base: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None

    def to_json(self) -> str:
        body = {k: v for k, v in self.__dict__.items() if v not in (None, {})}
        return json.dumps(body, indent=2, sort_keys=False) + "\n"


def lineage_of(info: RunStatus, versions: list[VersionInfo], credits: list[Balance]) -> Lineage:
    recipe = parse_recipe(info.recipe)
    return Lineage(
        run={"run_id": info.run_id, "name": info.name, "status": info.status, "rounds": info.rounds_done},
        versions=[
            {
                "number": v.number,
                "version_id": v.version_id,
                "parent_id": v.parent_id,
                "blob_sha256": v.blob_sha256,
                "held_out_loss": v.val_loss,
                "contributions": len(v.contributions),
                "merge_id": v.merge_id,
                "created_at": v.created_at,
            }
            for v in versions
        ],
        data=data_of(recipe),
        contributors=[c.model_dump(mode="json") for c in credits],
    )


def data_of(recipe: Recipe) -> dict[str, Any]:
    return {"source": recipe.data.source, "path": recipe.data.path, "options": recipe.data.options}


def dataset_names(recipe: Recipe) -> list[str]:
    if recipe.data.path is None and recipe.data.source == "tessera.data.text:load":
        return ["python-standard-library"]
    return [Path(recipe.data.path).name] if recipe.data.path else []


def model_card(lineage: Lineage, recipe: Recipe, license: str, library: str) -> str:
    """README.md with the Hugging Face metadata block and what a reader asks first."""
    latest = lineage.versions[-1] if lineage.versions else {}
    meta = {
        "library_name": library,
        "license": license,
        "tags": ["tessera", "diloco", "text-generation"] + (["lora", "peft"] if lineage.adapter else []),
        "pipeline_tag": "text-generation",
        "datasets": dataset_names(recipe),
    }
    if lineage.base:
        meta["base_model"] = f"tessera run {lineage.base['run_id']} version {lineage.base['version']}"
    header = "---\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in meta.items()) + "---\n"
    rows = "".join(
        f"| {c['name']} | {c['kind']} | {c['pflop']:.6f} | {c['tokens']} | {c['contributions']} |\n"
        for c in lineage.contributors
    )
    loss = latest.get("held_out_loss")
    return (
        f"{header}\n# {lineage.run['name']}\n\n"
        f"Trained with tessera: run `{lineage.run['run_id']}`, version {latest.get('number', '-')} "
        f"after {lineage.run['rounds']} rounds"
        + (f", held-out loss {loss:.4f}" if isinstance(loss, float) else "")
        + ".\n\n## Data\n\n"
        f"Source `{recipe.data.source}`, path `{recipe.data.path or 'the Python standard library'}`, "
        f"options `{json.dumps(recipe.data.options)}`.\n\n"
        "## Contributors (credited training compute)\n\n"
        "| provider | kind | PFLOP | tokens | contributions |\n|---|---|---|---|---|\n"
        f"{rows or NO_ROWS}\n"
        "## Lineage\n\n"
        f"{len(lineage.versions)} versions, each with its parent and its contributions: `lineage.json`.\n\n"
        "## Use\n\n" + usage(library)
    )


def usage(library: str) -> str:
    if library == "transformers":
        return (
            "```python\nfrom transformers import AutoModelForCausalLM\n"
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n```\n'
        )
    return (
        "```python\nfrom tessera.export import load_exported\n"
        'model = load_exported("path/to/this/folder")  # built from the recipe in tessera.json\n```\n'
    )


def write_folder(
    out: Path,
    model: nn.Module,
    recipe_text: str,
    lineage: Lineage,
    license: str = "other",
    tokenizer: Path | None = None,
) -> list[str]:
    """The export folder ``out`` (created; refused if it holds files); the files written."""
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    recipe = parse_recipe(recipe_text)
    hf = hf_model_of(model)
    if hf is not None:
        hf.save_pretrained(out)
    else:
        (out / WEIGHTS).write_bytes(to_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()}))
    if tokenizer is not None:
        write_tokenizer(out, tokenizer)
    manifest = {"recipe": recipe_text, "format": "transformers" if hf is not None else "tessera"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "lineage.json").write_text(lineage.to_json())
    library = "transformers" if hf is not None else "tessera"
    (out / "README.md").write_text(model_card(lineage, recipe, license, library))
    return sorted(p.name for p in out.iterdir())


def write_tokenizer(out: Path, tokenizer: Path) -> None:
    """The tokenizer as ``transformers`` saves one (tokenizer.json and its config)."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        shutil.copy(tokenizer, out / "tokenizer.json")
        return
    PreTrainedTokenizerFast(tokenizer_file=str(tokenizer)).save_pretrained(out)


def load_exported(folder: str | Path, trust: Trust | None = None) -> nn.Module:
    """The model of an export folder, rebuilt from its recipe with factories this machine trusts
    (tessera's own, and ``trust``)."""
    from tessera.task import build_model

    root = Path(folder)
    manifest = json.loads((root / MANIFEST).read_text())
    recipe = parse_recipe(manifest["recipe"])
    if manifest.get("format") == "transformers":
        from transformers import AutoModelForCausalLM

        from tessera.models.hf import CausalLM

        hf = AutoModelForCausalLM.from_pretrained(root)
        return CausalLM(hf) if recipe.model.factory == "tessera.models.hf:causal_lm" else hf
    model = build_model(recipe, trust or Trust())
    model.load_state_dict(from_bytes((root / WEIGHTS).read_bytes()))
    return model
