"""Reference modular LM: the byte-level trunk of ``tessera.models.lm`` plus one feed-forward
expert per data domain.

Each expert adds a residual feed-forward branch to every block, its output layer zero-initialised
so that trunk + a new expert computes exactly what the trunk does. An expert is trained with the
trunk frozen, on its own domain only; nothing else is needed from other domains.

The combiner needs no pooled data: with several experts switched on, the next-byte distribution
is a mixture of the trunk+expert models, each weighted by its posterior given the bytes seen so
far in the sequence (Bayes' rule with a prior per expert, uniform unless set from held-out data;
Branch-Train-Merge's ensemble). Switching an expert off (``use``) drops it from the mixture:
a data owner can opt out at inference. Parameter names (the module map works on them):
``tok``, ``pos``, ``blocks.<i>.{ln1,attn,ln2,mlp}``, ``ln_f``, ``head``: the trunk;
``blocks.<i>.experts.<domain>``: the expert of that domain.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import ConfigError
from tessera.models.lm import Block, ByteLM, ByteLMConfig

EXPERT_NAME = re.compile(r"\.experts\.[^.]+\.")
MAX_EXPERTS = 256


@dataclass(frozen=True)
class ModularLMConfig:
    trunk: ByteLMConfig = field(default_factory=ByteLMConfig)
    experts: tuple[str, ...] = ()
    expert_ratio: int = 4  # an expert's hidden width over d_model

    def __post_init__(self) -> None:
        if len(self.experts) > MAX_EXPERTS:
            raise ConfigError(f"a modular LM has at most {MAX_EXPERTS} experts, got {len(self.experts)}")
        if len(set(self.experts)) != len(self.experts):
            raise ConfigError(f"model experts must be distinct, got {list(self.experts)}")
        for name in self.experts:
            if not name.isidentifier():
                raise ConfigError(f"expert name {name!r} must be a Python identifier (it names parameters)")
        if not 1 <= self.expert_ratio <= 64:
            raise ConfigError(f"model expert_ratio must be from 1 to 64, got {self.expert_ratio}")


def feed_forward(d_model: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))


class ExpertBlock(Block):
    """A trunk block with one extra feed-forward branch per expert; ``active`` picks one (or none)."""

    def __init__(self, cfg: ModularLMConfig) -> None:
        super().__init__(cfg.trunk)
        d = cfg.trunk.d_model
        self.experts = nn.ModuleDict({name: feed_forward(d, cfg.expert_ratio * d) for name in cfg.experts})

    def forward_with(self, x: torch.Tensor, active: str | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        h = self.ln2(x)
        out = self.mlp(h)
        if active is not None:
            out = out + self.experts[active](h)
        return x + out


class ModularLM(ByteLM):
    """Maps byte ids (batch, time) to next-byte logits (batch, time, 256): of the trunk with at
    most one expert on, else the mixture's log-probabilities (valid logits too)."""

    def __init__(self, cfg: ModularLMConfig) -> None:
        super().__init__(cfg.trunk, lambda: ExpertBlock(cfg))
        self.modular = cfg
        self._init_by_name(torch.initial_seed())  # every parameter, replacing the trunk's draws
        self.active: tuple[str, ...] = cfg.experts
        self.register_buffer("log_prior", torch.zeros(len(cfg.experts)), persistent=False)

    @torch.no_grad()
    def _init_by_name(self, seed: int) -> None:
        """Each parameter drawn from its own generator, seeded by the run's seed and its name, so a
        model built with some of the experts holds the very same trunk and experts as the whole.
        Every expert starts from the same weights (one base: experts can be merged later)."""
        for name, param in self.named_parameters():
            key = EXPERT_NAME.sub(".experts.*.", name)
            if name.endswith("bias") or ".ln" in name or name.startswith("ln_f"):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif ".experts." in name and name.endswith("2.weight"):
                param.zero_()  # an expert's output layer: a new expert changes nothing yet
            else:
                generator = torch.Generator().manual_seed(seed ^ zlib.crc32(key.encode()))
                param.normal_(0.0, 0.02, generator=generator)

    def use(self, experts: Sequence[str], prior: Sequence[float] | None = None) -> None:
        """Switch on only ``experts`` (none: the trunk alone), with an optional prior over them."""
        unknown = sorted(set(experts) - set(self.modular.experts))
        if unknown:
            raise ConfigError(f"no expert {unknown} in this model; it has {list(self.modular.experts)}")
        if prior is not None and (len(prior) != len(experts) or min(prior, default=1) <= 0):
            raise ConfigError("the prior needs one positive weight per expert switched on")
        self.active = tuple(experts)
        weights = torch.tensor(prior if prior is not None else [1.0] * len(experts))
        self.log_prior = (weights / weights.sum()).log() if experts else torch.zeros(0)

    def expert_logits(self, idx: torch.Tensor, expert: str | None) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"sequence of {t} bytes exceeds the model context {self.cfg.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block.forward_with(x, expert)  # type: ignore[operator]
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if len(self.active) <= 1:
            return self.expert_logits(idx, self.active[0] if self.active else None)
        logp = self.expert_log_probs(idx)
        return torch.logsumexp(posterior(logp, idx, self.log_prior)[..., None] + logp, dim=0)

    def expert_log_probs(self, idx: torch.Tensor) -> torch.Tensor:
        """(experts, batch, time, 256): each active trunk+expert model's next-byte log-probabilities."""
        return torch.stack([F.log_softmax(self.expert_logits(idx, e), -1) for e in self.active])

    @torch.no_grad()
    def estimate_prior(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """A prior over the active experts from held-out data (e.g. the hub's public split): the
        mean posterior at the end of each sequence, starting from a uniform prior."""
        uniform = torch.full((len(self.active),), -math.log(len(self.active)))
        ends = [posterior(self.expert_log_probs(x), x, uniform)[:, :, -1].exp() for x, _ in batches]
        mean = torch.cat(ends, dim=1).mean(dim=1).clamp(min=1e-6)
        return (mean / mean.sum()).tolist()


def posterior(logp: torch.Tensor, idx: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """log w_e(t): expert e's posterior given the bytes of the sequence up to position t (what
    the model has been shown), from the log-probabilities ``logp`` (experts, batch, time, vocab)."""
    seen = logp[:, :, :-1].gather(-1, idx[None, :, 1:, None].expand(logp.shape[0], -1, -1, 1)).squeeze(-1)
    evidence = F.pad(seen.cumsum(-1), (1, 0))  # (experts, batch, time): log p_e(x_1..x_t | x_0)
    return F.log_softmax(evidence + log_prior[:, None, None], dim=0)


def build(
    experts: Sequence[str] = (),
    expert_ratio: int = 4,
    vocab_size: int = 256,
    context: int = 128,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    mlp_ratio: int = 4,
    dropout: float = 0.0,
) -> ModularLM:
    """Model factory named in recipes as ``tessera.models.modular:build``: the trunk's options
    are ByteLMConfig's."""
    trunk = ByteLMConfig(vocab_size, context, d_model, n_layers, n_heads, mlp_ratio, dropout)
    return ModularLM(ModularLMConfig(trunk, tuple(experts), expert_ratio))


def module_params(cfg: ModularLMConfig) -> dict[str, list[str]]:
    """The module map of this model: parameter-name patterns of the trunk and of each expert."""
    trunk = ["tok.*", "pos.*", "ln_f.*", "head.*"] + [
        f"blocks.*.{part}.*" for part in ("ln1", "attn", "ln2", "mlp")
    ]
    return {"trunk": trunk, **{name: [f"blocks.*.experts.{name}.*"] for name in cfg.experts}}


__all__ = ["ModularLM", "ModularLMConfig", "build", "module_params", "posterior"]
