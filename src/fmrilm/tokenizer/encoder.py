"""Token embedding and the transformer stacks of the tokenizer.

A token is one ROI x one temporal patch of ``patch`` frames. Its input embedding is the sum of

* a linear map of the patch's samples,
* the ROI's identity: random Fourier features of its MNI centroid (Tancik et al., 2020) through a
  small MLP, plus a learned embedding of its large-scale network label,
* a sinusoidal embedding of the patch's index within the window.

Nothing depends on an ROI's *index* in an atlas, so a tokenizer trained on one parcellation reads
any other whose ROI table gives MNI centroids (and, optionally, network labels).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fmrilm.data.networks import NETWORKS

# index 0 is "unknown network"; the order is part of the saved format (config.json)
NETWORK_VOCAB: tuple[str, ...] = ("", *NETWORKS)
MNI_SCALE_MM = 100.0


def network_index(labels) -> np.ndarray:
    """Map network labels to embedding indices; unknown labels map to 0."""
    lookup = {name: i for i, name in enumerate(NETWORK_VOCAB)}
    return np.array([lookup.get(str(lab), 0) for lab in labels], dtype=np.int64)


class RoiEmbedding(nn.Module):
    """ROI identity from its MNI centroid and network label (atlas-free)."""

    def __init__(self, d_model: int, n_features: int, sigma: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # fixed random frequencies (cycles per 100 mm); saved with the weights
        self.register_buffer("frequencies", torch.randn(3, n_features, generator=g) * sigma)
        self.mlp = nn.Sequential(
            nn.Linear(2 * n_features, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.network = nn.Embedding(len(NETWORK_VOCAB), d_model)

    def forward(self, xyz: torch.Tensor, networks: torch.Tensor) -> torch.Tensor:
        """``xyz`` (..., R, 3) in MNI mm, ``networks`` (..., R) indices -> (..., R, d_model)."""
        angle = 2 * math.pi * (xyz / MNI_SCALE_MM) @ self.frequencies
        feats = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)
        return self.mlp(feats) + self.network(networks)


def sinusoidal(n: int, d: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sinusoidal position embedding (n, d) for patch indices 0..n-1."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(
        torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d)
    )
    out = torch.zeros(n, d, device=device)
    out[:, 0::2] = torch.sin(pos * div)
    out[:, 1::2] = torch.cos(pos * div[: d // 2])
    return out


class SpaceTimeLayer(nn.Module):
    """Pre-norm block with divided attention: across ROIs (per patch), then across patches (per ROI).

    Divided space-time attention (as in TimeSformer, Bertasius et al., 2021) costs
    O(R^2 P + P^2 R) per window instead of O((R P)^2) for full attention over all tokens, which
    keeps 400-ROI atlases affordable on a CPU.
    """

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm_space = nn.LayerNorm(d_model)
        self.space = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm_time = nn.LayerNorm(d_model)
        self.time = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, r, p, d = h.shape
        s = self.norm_space(h).transpose(1, 2).reshape(b * p, r, d)
        s = self.space(s, s, s, need_weights=False)[0]
        h = h + s.reshape(b, p, r, d).transpose(1, 2)
        t = self.norm_time(h).reshape(b * r, p, d)
        t = self.time(t, t, t, need_weights=False)[0]
        h = h + t.reshape(b, r, p, d)
        return h + self.ff(self.norm_ff(h))


class TokenTransformer(nn.Module):
    """A stack of :class:`SpaceTimeLayer` over the (B, R, P, d) token grid of a window."""

    def __init__(self, d_model: int, n_heads: int, n_layers: int, ff_mult: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            SpaceTimeLayer(d_model, n_heads, ff_mult, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)
