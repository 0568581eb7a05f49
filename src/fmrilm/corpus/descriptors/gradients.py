"""Connectivity gradients: diffusion-map embedding of the functional connectivity.

Follows BrainSpace's ``GradientMaps(kernel="cosine", approach="dm")`` defaults (Vos de Wael et
al., 2020, Commun. Biol. 3:103), the method of Margulies et al. (2016, PNAS 113:12574):

1. keep the top 10 % of each row of the FC matrix (diagonal included), zero the rest;
2. affinity = cosine similarity between the sparsified rows, negatives set to 0;
3. anisotropic diffusion map (Coifman & Lafon, 2006) with alpha = 0.5 and automatic
   (multi-scale) diffusion time: eigenvalues ``l`` of the Markov matrix are rescaled to
   ``l / (1 - l)`` and scale the eigenvectors.

The largest-algebraic eigenpairs come from the symmetric conjugate of the Markov matrix
(``scipy.linalg.eigh``, or ARPACK's ``eigsh`` with a fixed start vector above
``DENSE_MAX_ROIS`` ROIs, where it is faster). Eigenvector signs are arbitrary; as in BrainSpace,
each gradient is oriented so that its largest-magnitude value is positive (the longer tail of
gradient 1 is its high end). A disconnected affinity graph has no meaningful gradient (its
eigenvalue 1 repeats): the family then returns a note.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh
from scipy.sparse.linalg import eigsh

from fmrilm.corpus.descriptors._common import NO_NETWORKS, network_average, note
from fmrilm.corpus.descriptors.base import Context, Descriptor

FAMILY = "gradients"
SPARSITY = 0.9  # fraction of each row zeroed before the kernel
ALPHA = 0.5
N_COMPONENTS = 10
DENSE_MAX_ROIS = 200
_DM = "diffusion map of the cosine affinity of the row-wise top-10 % FC (alpha 0.5; numpy/scipy, as BrainSpace)"


def cosine_affinity(fc: np.ndarray, sparsity: float = SPARSITY) -> np.ndarray:
    """Cosine similarity of FC rows after keeping each row's top ``1 - sparsity``; (n, n)."""
    n = fc.shape[0]
    k = max(1, int(n * (1.0 - sparsity)))
    top = np.argpartition(fc, n - k, axis=1)[:, n - k :]  # (n, k) column indices
    rows = np.arange(n)[:, None]
    x = np.zeros_like(fc, dtype=np.float64)
    x[rows, top] = fc[rows, top]
    norm = np.linalg.norm(x, axis=1)
    x /= np.where(norm > 0, norm, 1.0)[:, None]
    aff = x @ x.T
    aff[aff < 0] = 0.0
    return aff


def is_connected(adjacency: np.ndarray) -> bool:
    """Whether the graph with edges ``adjacency > 0`` is connected (breadth-first, vectorised)."""
    seen = np.zeros(adjacency.shape[0], dtype=bool)
    seen[0] = True
    frontier = seen.copy()
    while frontier.any():
        frontier = (adjacency[frontier] > 0).any(axis=0) & ~seen
        seen |= frontier
    return bool(seen.all())


def diffusion_map(
    affinity: np.ndarray, n_components: int = N_COMPONENTS, alpha: float = ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients (n, n_components) and their rescaled eigenvalues (n_components,), descending.

    The affinity graph must be connected (one eigenvalue 1).
    """
    n = affinity.shape[0]
    d = affinity.sum(axis=1) ** -alpha
    kernel = affinity * d[:, None] * d[None, :]  # W(alpha) = D^-alpha W D^-alpha
    sq = np.sqrt(kernel.sum(axis=1))
    sym = kernel / sq[:, None] / sq[None, :]  # same spectrum as the Markov matrix D^-1 W(alpha)
    m = min(n_components + 1, n)
    if n > DENSE_MAX_ROIS:
        v0 = np.random.default_rng(0).uniform(-1.0, 1.0, n)  # fixed: deterministic output
        w, phi = eigsh(sym, k=m, which="LA", tol=0, v0=v0)
        order = np.argsort(w)
        w, phi = w[order], phi[:, order]
    else:
        w, phi = eigh(sym, subset_by_index=[n - m, n - 1])
    w, phi = w[::-1], phi[:, ::-1]
    psi = phi / sq[:, None]  # right eigenvectors of the Markov matrix
    psi /= psi[:, [0]]  # the first one is constant: make it all ones
    w = w / w[0]
    w, psi = w[1:], psi[:, 1:]
    w = w / (1.0 - w)  # multi-scale diffusion time
    emb = psi * w[None, :]
    emb *= np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(emb.shape[1])])
    return emb, w


def compute(ctx: Context) -> list[Descriptor]:
    """Principal-gradient range, its eigenvalue share and the networks anchoring its ends."""
    if ctx.n_rois < 3:
        return [note(FAMILY, "fewer than 3 ROIs; gradients omitted")]
    aff = cosine_affinity(ctx.fc())
    if not is_connected(aff):
        return [note(FAMILY, "the FC affinity graph is disconnected; gradients undefined")]
    emb, lambdas = diffusion_map(aff)
    g1 = emb[:, 0]
    out = [
        Descriptor(
            "gradients.principal_range",
            float(g1.max() - g1.min()),
            "a.u.",
            FAMILY,
            "max - min over ROIs of gradient 1; " + _DM,
        ),
        Descriptor(
            "gradients.explained",
            float(lambdas[0] / lambdas[:N_COMPONENTS].sum()),
            "fraction",
            FAMILY,
            f"eigenvalue of gradient 1 / sum of the first {min(N_COMPONENTS, lambdas.size)}; "
            + _DM,
        ),
    ]
    if not ctx.network_index():
        return [*out, note(FAMILY, NO_NETWORKS)]
    means = network_average(g1, ctx)
    orient = "gradient 1 oriented so that its largest-magnitude end is positive"
    out.append(
        Descriptor(
            "gradients.anchor_low",
            min(means, key=means.get),
            "",
            FAMILY,
            f"network with the lowest mean gradient-1 value ({orient}); " + _DM,
        )
    )
    out.append(
        Descriptor(
            "gradients.anchor_high",
            max(means, key=means.get),
            "",
            FAMILY,
            f"network with the highest mean gradient-1 value ({orient}); " + _DM,
        )
    )
    return out
