"""Held-out evaluation of a tokenizer: reconstruction, code usage, retrieval, a PCA reference.

Reconstruction R² pools all held-out full windows of an atlas:
``1 - sum (x - x_hat)^2 / sum (x - mean_roi)^2``, where ``mean_roi`` is each ROI's mean over the
held-out frames, so predicting that per-ROI mean scores exactly 0. Windows are non-overlapping
and start at frame 0 of each scan (the partial tail is left out so every method sees the same
frames).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fmrilm.errors import FmrilmError
from fmrilm.evaluation.retrieval import rank_metrics, retrieval_ranks, retrieval_similarities
from fmrilm.tokenizer.codes import full_windows, scan_texts
from fmrilm.tokenizer.neural_tokenizer import RoiGeometry
from fmrilm.tokenizer.quantizer import code_statistics


class _R2:
    """Streaming per-ROI sums for a pooled R²."""

    def __init__(self, n_rois: int):
        self.n = 0
        self.s = np.zeros(n_rois)
        self.ss = np.zeros(n_rois)
        self.sse = np.zeros(n_rois)

    def add(self, x: np.ndarray, x_hat: np.ndarray) -> None:
        x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
        h2 = x_hat.reshape(-1, x.shape[-1]).astype(np.float64)
        self.n += x2.shape[0]
        self.s += x2.sum(0)
        self.ss += (x2**2).sum(0)
        self.sse += ((x2 - h2) ** 2).sum(0)

    def sst(self) -> np.ndarray:
        return self.ss - self.s**2 / max(self.n, 1)

    def value(self, rois: np.ndarray | None = None) -> float:
        sel = slice(None) if rois is None else rois
        return float(1.0 - self.sse[sel].sum() / self.sst()[sel].sum())

    def per_roi(self) -> np.ndarray:
        return 1.0 - self.sse / np.maximum(self.sst(), 1e-12)


@torch.no_grad()
def evaluate_tokenizer(
    tok,
    cohort,
    rows,
    *,
    corpus=None,
    text_encoder=None,
    keep_windows: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Scores of ``tok`` on the scans in ``rows`` (manifest rows of one atlas or several).

    ``text_encoder`` maps a list of texts to unit vectors (default: the tokenizer's own frozen
    encoder); retrieval runs only when ``corpus`` is given and the tokenizer is text-aligned.
    """
    if len(rows) == 0:
        raise FmrilmError("no scans to evaluate (empty split)")
    tok.eval()
    counts = torch.zeros(tok.config.codebook_size, dtype=torch.long)
    r2: dict[str, _R2] = {}
    geo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    windows: dict[str, list[np.ndarray]] = {}
    emb, emb_ids = [], []
    n_windows = 0
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="evaluate", disable=not progress):
        sid, atlas = row["scan_id"], row["atlas"]
        x = tok.prepare(cohort.series(sid), float(row["tr"]), what=f"scan {sid}")
        wins = full_windows(tok, x)
        if len(wins) == 0:
            continue
        if atlas not in geo:
            g = RoiGeometry.from_atlas(cohort.atlas(atlas))
            geo[atlas] = (torch.from_numpy(g.xyz), torch.from_numpy(g.networks))
            r2[atlas] = _R2(len(g))
        xyz, nets = geo[atlas]
        t = torch.from_numpy(np.ascontiguousarray(wins))
        ids, q = tok.quantize_windows(t, xyz, nets)
        counts += torch.bincount(ids.reshape(-1), minlength=counts.numel())
        recon = tok.decode_vectors(q, xyz, nets).numpy()
        r2[atlas].add(wins, recon)
        n_windows += len(wins)
        if keep_windows:
            windows.setdefault(atlas, []).append(wins)
        if tok.text_dim:
            v = tok.pooled_text_vector(q).mean(0)
            emb.append(F.normalize(v, dim=-1).numpy())
            emb_ids.append(sid)
    if n_windows == 0:
        raise FmrilmError(
            f"no held-out scan is at least one window ({tok.config.window} frames) long"
        )
    out: dict[str, Any] = {
        "scans": len(rows),
        "windows": n_windows,
        "reconstruction_r2": {a: round(v.value(), 4) for a, v in r2.items()},
        "codes": code_statistics(counts),
        "code_counts": counts.tolist(),
        "bits_per_window": {
            a: int(len(geo[a][0]) * tok.config.n_patches * math.log2(tok.config.codebook_size))
            for a in geo
        },
    }
    out["_r2"] = r2
    if keep_windows:
        out["_windows"] = {a: np.concatenate(w) for a, w in windows.items()}
    if corpus is not None and len(scan_texts(corpus, emb_ids)) >= 2:
        out["retrieval"] = retrieval(np.stack(emb), emb_ids, corpus, tok, text_encoder)
    return out


def retrieval(
    scan_vecs: np.ndarray, scan_ids: list[str], corpus, tok, text_encoder=None
) -> dict[str, Any]:
    """fMRI -> text retrieval among the given scans: rank of each scan's own description."""
    sims, kept = retrieval_similarities(scan_vecs, scan_ids, corpus, tok, text_encoder)
    ranks = retrieval_ranks(sims)
    return {"candidates": len(kept), **rank_metrics(ranks, len(kept))}


def pca_reference(
    train: np.ndarray,
    test: np.ndarray,
    bits_per_window: int,
    bits_per_coefficient: tuple[int, ...] = (4, 6, 8, 12, 16),
    clip_sd: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 4.0),
) -> dict[str, Any]:
    """PCA of flattened windows with the same number of bits per window as the tokenizer.

    For ``b`` bits per coefficient PCA keeps ``bits_per_window // b`` components and quantizes
    each coefficient uniformly on ``[-c sd, +c sd]`` (``sd`` from the training windows, ``c``
    chosen on the training windows). Fitted on ``train`` windows only; ``test`` R² is pooled
    with held-out per-ROI means, as for the tokenizer. The best ``b`` is chosen on ``train``.
    """
    n, t, r = train.shape
    xtr = train.reshape(n, -1).astype(np.float64)
    xte = test.reshape(len(test), -1).astype(np.float64)
    mean = xtr.mean(0)
    kmax = min(max(bits_per_window // min(bits_per_coefficient), 1), xtr.shape[1], n - 1)
    _, _, vt = np.linalg.svd(xtr - mean, full_matrices=False)
    comps = vt[:kmax]
    ctr = (xtr - mean) @ comps.T
    cte = (xte - mean) @ comps.T
    sd = ctr.std(0) + 1e-12

    def recon(coef: np.ndarray, k: int, b: int, c: float) -> np.ndarray:
        if b >= 16:
            return coef[:, :k] @ comps[:k] + mean  # float16-like: quantization error negligible
        levels = 2**b
        lim = c * sd[:k]
        step = 2 * lim / (levels - 1)
        q = np.clip(np.round((np.clip(coef[:, :k], -lim, lim) + lim) / step), 0, levels - 1)
        return (q * step - lim) @ comps[:k] + mean

    def r2(x: np.ndarray, xh: np.ndarray) -> float:
        xr, hr = x.reshape(-1, r), xh.reshape(-1, r)
        sst = ((xr - xr.mean(0)) ** 2).sum()
        return float(1 - ((xr - hr) ** 2).sum() / sst)

    curve = []
    for b in bits_per_coefficient:
        k = min(bits_per_window // b, kmax)
        cs = [16.0] if b >= 16 else list(clip_sd)
        scores = [(r2(xtr, recon(ctr, k, b, c)), c) for c in cs]
        train_r2, c = max(scores)
        curve.append(
            {
                "bits_per_coefficient": b,
                "components": k,
                "clip_sd": c,
                "train_r2": round(train_r2, 4),
                "test_r2": round(r2(xte, recon(cte, k, b, c)), 4),
            }
        )
    best = max(curve, key=lambda d: d["train_r2"])
    return {"bits_per_window": bits_per_window, "best": best, "curve": curve}


@torch.no_grad()
def alignment_to_words(tok, words: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """How word-like the projected codebook is (what stage 2 initialises fMRI tokens with).

    * ``norm_ratio``: mean norm of projected codes / mean norm of word embeddings (1 = same scale);
    * ``code_to_nearest_word_cos``: mean cosine of each projected code to its nearest word;
    * ``word_to_nearest_word_cos``: the same for 2,000 random words against the other words
      (the reference: how close words sit to each other);
    * ``mean_offset_cos``: cosine between the mean projected code and the mean word.
    """
    codes = tok.code_embeddings_for_llm().float()
    words = words.float()
    wn = F.normalize(words, dim=-1)
    cn = F.normalize(codes, dim=-1)
    g = torch.Generator().manual_seed(seed)
    sample = torch.randperm(len(words), generator=g)[:2000]
    sims_w = wn[sample] @ wn.t()
    sims_w[torch.arange(len(sample)), sample] = -2.0  # exclude the word itself
    return {
        "norm_ratio": round(float(codes.norm(dim=-1).mean() / words.norm(dim=-1).mean()), 4),
        "code_to_nearest_word_cos": round(float((cn @ wn.t()).max(1).values.mean()), 4),
        "word_to_nearest_word_cos": round(float(sims_w.max(1).values.mean()), 4),
        "mean_offset_cos": round(
            float(F.cosine_similarity(codes.mean(0), words.mean(0), dim=0)), 4
        ),
    }
