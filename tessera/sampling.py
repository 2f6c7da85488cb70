"""Sampling text from any causal LM a run trains: a model whose forward maps token ids
(batch, time) to a tensor, a ``ModelOutput`` or a dict of logits (batch, time, vocabulary).

Tokens are bytes, or the run's tokenizer (``tessera.data.tokens``); the context window is the
one the run trained on (its data option ``context``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.core.inner import outputs_of
from tessera.data.tokens import Tokens
from tessera.errors import ConfigError


def next_logits(model: nn.Module, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits of the token after ``ids`` (1, time), over the tokenizer's vocabulary."""
    out = outputs_of(model, ids)
    if out.dim() != 3 or out.shape[:2] != ids.shape or out.shape[-1] < vocab_size:
        raise ConfigError(
            f"the model's output has shape {tuple(out.shape)} for token ids of shape {tuple(ids.shape)}; "
            f"sampling needs a causal LM: logits (batch, time, vocabulary of at least {vocab_size})"
        )
    return out[0, -1, :vocab_size]


@torch.no_grad()
def sample(
    model: nn.Module,
    tokens: Tokens,
    prompt: str,
    new_tokens: int,
    context: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """``prompt`` and ``new_tokens`` sampled after it (greedy when ``temperature`` <= 0)."""
    model.eval()
    ids = torch.tensor(tokens.encode(prompt.encode()).astype("int64")).view(1, -1)
    if ids.numel() == 0:
        raise ConfigError("the prompt is empty after tokenization; give a prompt of some text")
    generator = torch.Generator().manual_seed(seed)
    for _ in range(new_tokens):
        logits = next_logits(model, ids[:, -context:], tokens.vocab_size)
        if temperature <= 0:
            nxt = logits.argmax().view(1, 1)
        else:
            probs = F.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).view(1, 1)
        ids = torch.cat([ids, nxt], dim=1)
    return tokens.decode(ids.view(-1).tolist())
