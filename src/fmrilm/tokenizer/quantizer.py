"""Cosine vector quantizer with EMA codebook updates and dead-code restart.

Encoder outputs and codes live on the unit sphere; a vector's code is the one with the highest
cosine similarity. The codebook is not trained by gradients: each code is the normalised
exponential moving average of the vectors assigned to it (van den Oord et al., 2017; the cosine
form as in ViT-VQGAN, Yu et al., 2022). The encoder gets the commitment loss and, through the
straight-through estimator, the decoder's gradients. A code whose average assignment count per
step falls below ``dead_code_threshold`` is restarted on a random encoder output of the batch,
which keeps the codebook in use. The first training batch initialises the codebook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineVectorQuantizer(nn.Module):
    def __init__(self, size: int, dim: int, decay: float = 0.95, dead_code_threshold: float = 1.0):
        super().__init__()
        self.size, self.dim = size, dim
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("codebook", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("cluster_size", torch.ones(size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids of any shape -> (*ids.shape, dim)."""
        return self.codebook[ids]

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Ids of the nearest codes for unit vectors ``z`` (N, dim)."""
        return (z @ self.codebook.t()).argmax(dim=-1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``z`` (..., dim).

        Returns the straight-through quantized vectors (..., dim), the code ids (...), and the
        commitment loss (mean squared distance between normalised inputs and their codes).
        """
        shape = z.shape[:-1]
        flat = F.normalize(z.reshape(-1, self.dim).float(), dim=-1)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        ids = self.nearest(flat.detach())
        q = self.codebook[ids]
        if self.training:
            self._ema_update(flat.detach(), ids)
        commit = (flat - q.detach()).pow(2).sum(-1).mean()
        q_st = flat + (q - flat).detach()
        return q_st.view(*shape, self.dim), ids.view(shape), commit

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        pick = torch.randint(0, flat.shape[0], (self.size,), device=flat.device)
        self.codebook.copy_(flat[pick])
        self.embed_sum.copy_(flat[pick])
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.size).to(flat.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            # a restarted code gets a grace period (4x the threshold decays below it in
            # log(4) / -log(decay) steps) to attract vectors before it can be restarted again
            self.embed_sum[dead] = flat[pick] * 4 * self.dead_code_threshold
            self.cluster_size[dead] = 4 * self.dead_code_threshold
            self.restarts.add_(n_dead)
        self.codebook.copy_(F.normalize(self.embed_sum, dim=-1))


def code_statistics(counts: torch.Tensor | list[int]) -> dict[str, float]:
    """Usage (% of codes used at least once) and perplexity of a code-count histogram."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    total = c.sum()
    if total <= 0:
        return {"usage_pct": 0.0, "perplexity": 0.0}
    p = c[c > 0] / total
    return {
        "usage_pct": round(100.0 * float((c > 0).sum()) / c.numel(), 2),
        "perplexity": round(float(torch.exp(-(p * p.log()).sum())), 2),
    }
