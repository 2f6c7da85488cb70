"""Hugging Face ``transformers`` causal LMs built from a declarative config: no user code runs.

A recipe names ``factory = "tessera.models.hf:causal_lm"`` with ``options = { model_type =
"gpt2", config = { n_layer = 2, ... } }``. Only architectures that ship inside ``transformers``
itself are built (its causal-LM registry; remote code is never trusted), the config keys must be
ones the architecture's config class knows, and weights start from a random initialisation (the
recipe's seed): nothing is downloaded. The model maps token ids (batch, time) to logits
(batch, time, vocabulary), as tessera's own LMs do. Needs ``pip install tessera[hf]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tessera.errors import ConfigError

REFUSED_KEYS = ("auto_map", "trust_remote_code", "model_type")  # other code, or another architecture
MAX_SETTING = 1 << 20  # any integer setting (widths, vocabulary, positions)
MAX_LAYERS = 1024  # settings named for layers: checked before building, even on the meta device


class CausalLM(nn.Module):
    """A ``transformers`` causal LM whose forward returns the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def causal_lm(model_type: str, config: dict[str, Any] | None = None) -> CausalLM:
    """The architecture ``model_type`` (e.g. "gpt2", "llama") with ``config`` over its defaults."""
    try:
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError as exc:
        raise ConfigError(
            "tessera.models.hf needs the transformers package: pip install 'tessera[hf]'"
        ) from exc
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(
            f"model_type {model_type!r} is not a causal LM that ships with transformers; "
            f"e.g. {', '.join(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)[:8])}, ..."
        )
    config_class = CONFIG_MAPPING[model_type]
    settings = dict(config or {})
    known = set(config_class().to_dict())
    unknown = sorted(k for k in settings if k not in known or k.startswith("_") or k in REFUSED_KEYS)
    if unknown:
        raise ConfigError(f"{model_type} config has no settable keys {unknown}; see {config_class.__name__}")
    for key, value in settings.items():
        most = MAX_LAYERS if "layer" in key else MAX_SETTING
        if isinstance(value, int) and not isinstance(value, bool) and not -1 <= value <= most:
            raise ConfigError(f"{model_type} config {key} = {value} is out of range (at most {most})")
    model = AutoModelForCausalLM.from_config(config_class(**settings), trust_remote_code=False)
    return CausalLM(model)
