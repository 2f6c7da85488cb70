"""Byte-level causal transformer language model (vocabulary 256: no tokenizer to download)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import ConfigError

# Upper bounds: a recipe's options are checked before anything is built (even on the meta device,
# a billion layers would take the machine's memory as Python objects).
LIMITS = {"vocab_size": 1 << 20, "context": 1 << 16, "d_model": 1 << 16, "n_layers": 1024, "n_heads": 1024,
          "mlp_ratio": 64}  # fmt: skip


@dataclass(frozen=True)
class ByteLMConfig:
    vocab_size: int = 256
    context: int = 128
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name, most in LIMITS.items():
            if not 1 <= getattr(self, name) <= most:
                raise ConfigError(f"model {name} must be from 1 to {most}, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"model d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ByteLMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        shape = (b, t, self.n_heads, c // self.n_heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: ByteLMConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ByteLM(nn.Module):
    """Maps byte ids (batch, time) to next-byte logits (batch, time, 256)."""

    def __init__(self, cfg: ByteLMConfig, block: Callable[[], nn.Module] | None = None) -> None:
        """``block`` makes each transformer block (default ``Block(cfg)``)."""
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList((block or (lambda: Block(cfg)))() for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence of {t} bytes exceeds the model context {self.cfg.context}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        new_bytes: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``new_bytes`` continuations of ``prompt`` (1-D byte ids)."""
        idx = prompt.view(1, -1)
        for _ in range(new_bytes):
            logits = self(idx[:, -self.cfg.context :])[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx.view(-1)


def build(
    vocab_size: int = 256,
    context: int = 128,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> ByteLM:
    """Model factory named in recipes as ``tessera.models.lm:build`` (options: ByteLMConfig's)."""
    return ByteLM(ByteLMConfig(vocab_size, context, d_model, n_layers, n_heads, mlp_ratio, dropout))


def flops_per_token(cfg: ByteLMConfig) -> float:
    """Training FLOPs per token: 6N plus attention (6 * layers * context * d_model)."""
    n = 12 * cfg.n_layers * cfg.d_model**2 + 2 * cfg.vocab_size * cfg.d_model
    return 6 * n + 6 * cfg.n_layers * cfg.context * cfg.d_model


__all__ = ["ByteLM", "ByteLMConfig", "build", "flops_per_token"]
