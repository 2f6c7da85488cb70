"""Exported models: a folder that Hugging Face tools load, with a model card and the lineage.

``write_folder`` writes, for every model, ``tessera.json`` (the recipe and where the weights
came from), ``README.md`` (a model card whose metadata block Hugging Face reads: licence,
datasets, base model, tags) and ``lineage.json`` (the run, every version back to the first, the
data the recipe names and the providers credited for the compute); for a run on the commons'
dataset versions, also ``prov.json``: the datasets, their derivations, the tokens taken from
each and whose compute, as W3C PROV-JSON. A ``transformers`` model is
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

from tessera.api.commons import DatasetUse, RunLineage
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
    commons: dict[str, Any] | None = None  # the version's RunLineage: datasets, tokens, compute, fork

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
    return {
        "source": recipe.data.source,
        "path": recipe.data.path,
        "options": recipe.data.options,
        "datasets": recipe.data.datasets,
    }


def dataset_names(recipe: Recipe, commons: RunLineage | None = None) -> list[str]:
    """The card's ``datasets``: the dataset versions trained on (``tessera-dataset:<id>``, named
    where the exporter may read them), or the recipe's folder."""
    if commons is not None and commons.datasets:
        return [
            f"tessera-dataset:{d.name + '@' if d.name else ''}{d.dataset_id}"
            for d in commons.datasets
            if d.weight
        ]
    if recipe.data.path is None and recipe.data.source == "tessera.data.text:load":
        return ["python-standard-library"]
    return [Path(recipe.data.path).name] if recipe.data.path else []


def data_section(recipe: Recipe, commons: RunLineage | None) -> str:
    """The card's data: the dataset versions with their licences, tokens and derivations, whose
    compute trained on which, and marks for withdrawn data; or the recipe's data source."""
    if commons is None or not commons.datasets:
        return (
            f"Source `{recipe.data.source}`, path `{recipe.data.path or 'the Python standard library'}`, "
            f"options `{json.dumps(recipe.data.options)}`.\n\n"
        )
    rows = "".join(dataset_row(d) for d in commons.datasets)
    compute = "".join(
        f"| {c.provider} | `{(c.dataset_id or '-')[:16]}` | {c.tokens} | {c.pflop:.6f} |\n"
        for c in commons.compute
    )
    marks = "".join(f"- **{m}**\n" for m in commons.marks)
    fork = commons.forked_from
    return (
        "| dataset | name | owner | licence | visibility | weight | tokens | derived |\n"
        f"|---|---|---|---|---|---|---|---|\n{rows}\n"
        "| provider | trained on | tokens | PFLOP |\n|---|---|---|---|\n"
        f"{compute or '| - | - | - | - |' + chr(10)}\n"
        + (f"Withdrawn data:\n\n{marks}\n" if marks else "")
        + (f"Forked from run `{fork.run_id}` version {fork.version}.\n\n" if fork else "")
        + "The whole lineage, as W3C PROV-JSON: `prov.json`.\n\n"
    )


def dataset_row(d: DatasetUse) -> str:
    weight = d.weight if d.weight is not None else "ancestor"
    inputs = ", ".join(f"`{i[:16]}`" for i in d.derived_from)
    derived = f"{d.transform} of {inputs}" if d.derived_from else ""
    return (
        f"| `{d.dataset_id[:16]}` | {d.name or '(private)'} | {d.owner or '-'} | {d.licence} "
        f"| {d.visibility} | {weight} | {d.tokens} | {derived} |\n"
    )


PROV_SECTIONS = (
    "entity",
    "activity",
    "agent",
    "used",
    "wasGeneratedBy",
    "wasAssociatedWith",
    "wasDerivedFrom",
)


def prov_document(commons: RunLineage) -> dict[str, Any]:
    """The lineage as W3C PROV-JSON: the version (an entity) was generated by its training (an
    activity) that used the dataset versions and was associated with the providers whose compute
    it credits; derived dataset versions were derived from their inputs, and a forked run's first
    version from the version it forked."""
    doc: dict[str, dict[str, Any]] = {"prefix": {"tessera": "urn:tessera:"}}
    doc |= {section: {} for section in PROV_SECTIONS}
    add_prov(doc, commons)
    return {k: v for k, v in doc.items() if v}


def add_prov(doc: dict[str, dict[str, Any]], commons: RunLineage) -> str:
    """Add one version's lineage (and its fork's) to ``doc``; the version's entity id."""
    version = f"tessera:version/{commons.run_id}/{commons.version}"
    training = f"tessera:training/{commons.run_id}/{commons.version}"
    doc["entity"][version] = {"prov:type": "tessera:ModelVersion", "prov:label": commons.name}
    doc["activity"][training] = {"prov:type": "tessera:Training"}
    doc["wasGeneratedBy"][f"_:gen-{commons.run_id}-{commons.version}"] = {
        "prov:entity": version,
        "prov:activity": training,
    }
    for d in commons.datasets:
        add_dataset(doc, training, d)
    for c in commons.compute:
        agent = f"tessera:provider/{c.provider}"
        doc["agent"][agent] = {"prov:type": "prov:Organization"}
        doc["wasAssociatedWith"][f"_:assoc-{training}-{c.provider}-{c.dataset_id}"] = {
            "prov:activity": training,
            "prov:agent": agent,
            "tessera:tokens": c.tokens,
            "tessera:pflop": c.pflop,
            "tessera:dataset": c.dataset_id,
        }
    if commons.forked_from is not None:
        doc["wasDerivedFrom"][f"_:fork-{commons.run_id}"] = {
            "prov:generatedEntity": version,
            "prov:usedEntity": add_prov(doc, commons.forked_from),
            "prov:type": "tessera:Fork",
        }
    return version


def add_dataset(doc: dict[str, dict[str, Any]], training: str, d: DatasetUse) -> None:
    entity = f"tessera:dataset/{d.dataset_id}"
    doc["entity"][entity] = {
        "prov:type": "tessera:DatasetVersion",
        "tessera:licence": d.licence,
        "tessera:withdrawn": d.withdrawn,
        **({"prov:label": d.name} if d.name else {}),
    }
    if d.weight is not None:
        doc["used"][f"_:use-{training}-{d.dataset_id}"] = {
            "prov:activity": training,
            "prov:entity": entity,
            "tessera:tokens": d.tokens,
        }
    for source in d.derived_from:
        doc["wasDerivedFrom"][f"_:der-{d.dataset_id}-{source}"] = {
            "prov:generatedEntity": entity,
            "prov:usedEntity": f"tessera:dataset/{source}",
            "tessera:transform": d.transform,
        }


def model_card(lineage: Lineage, recipe: Recipe, license: str, library: str) -> str:
    """README.md with the Hugging Face metadata block and what a reader asks first."""
    commons = RunLineage.model_validate(lineage.commons) if lineage.commons else None
    return card_text(lineage, recipe, license, library, commons)


def card_text(
    lineage: Lineage, recipe: Recipe, license: str, library: str, commons: RunLineage | None
) -> str:
    latest = lineage.versions[-1] if lineage.versions else {}
    meta = {
        "library_name": library,
        "license": license,
        "tags": ["tessera", "diloco", "text-generation"] + (["lora", "peft"] if lineage.adapter else []),
        "pipeline_tag": "text-generation",
        "datasets": dataset_names(recipe, commons),
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
        + data_section(recipe, commons)
        + "## Contributors (credited training compute)\n\n"
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
    if lineage.commons:
        prov = prov_document(RunLineage.model_validate(lineage.commons))
        (out / "prov.json").write_text(json.dumps(prov, indent=2) + "\n")
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
