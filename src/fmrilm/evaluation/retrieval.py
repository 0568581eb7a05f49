"""fMRI <-> text retrieval among held-out scans, and the one recall@k computation.

A scan's query vector is the tokenizer's text-space embedding (:func:`scan_embeddings`); its
description is its corpus entry (the mean sentence embedding of its text variants, projected
like in training). :func:`recall_metrics` turns the 1-based ranks of the matching pairs into
recall@k, chance and the median rank -- once, for every caller. Two layouts of the same numbers
exist because two outputs are read by people and tests: the evaluation report's
(``recall_at`` / ``chance_recall_at`` per direction, :func:`retrieval_both_ways`) and the
tokenizer evaluation's flat keys (``R@1``, ``chance_R@1``, :func:`rank_metrics`, printed by
``fmrilm tokenizer train`` and the demo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from fmrilm.errors import FmrilmError
from fmrilm.tokenizer.align import embed_texts
from fmrilm.tokenizer.codes import scan_text_embeddings, scan_texts

if TYPE_CHECKING:
    import pandas as pd

REPORT_KS = (1, 5, 10)  # recall_at / chance_recall_at in the report schema
CURVE_KS = (1, 2, 5, 10, 20, 50)  # the report's recall@k curve (k <= n)


def retrieval_ranks(sims: np.ndarray) -> np.ndarray:
    """1-based rank of the matching column (the diagonal) in each row of ``sims``."""
    own = np.diag(sims)
    return (sims > own[:, None]).sum(1) + 1


def recall_metrics(ranks: np.ndarray, n: int, ks=REPORT_KS) -> dict[str, Any]:
    """Recall@k (share of ranks <= k) and chance (min(k, n) / n) for each k, the median rank."""
    ranks = np.asarray(ranks)
    return {
        "recall_at": {k: round(float((ranks <= k).mean()), 4) for k in ks},
        "chance_at": {k: round(min(k, n) / n, 4) for k in ks},
        "median_rank": float(np.median(ranks)),
    }


def rank_metrics(ranks: np.ndarray, n: int) -> dict[str, float]:
    """The tokenizer evaluation's flat layout of :func:`recall_metrics` (``R@1``, ...)."""
    m = recall_metrics(ranks, n, (1, 5, 10))
    return {
        **{f"R@{k}": m["recall_at"][k] for k in (1, 5, 10)},
        "median_rank": m["median_rank"],
        **{f"chance_R@{k}": m["chance_at"][k] for k in (1, 5)},
    }


def report_metrics(ranks: np.ndarray) -> dict[str, Any]:
    """One direction of the report's ``retrieval`` entry (:mod:`fmrilm.evaluation.report`)."""
    n = len(ranks)
    at = recall_metrics(ranks, n)
    curve_ks = [k for k in CURVE_KS if k <= n]
    return {
        "recall_at": {str(k): v for k, v in at["recall_at"].items()},
        "median_rank": at["median_rank"],
        "n": n,
        "chance_recall_at": {str(k): v for k, v in at["chance_at"].items()},
        "curve": {
            "k": curve_ks,
            "recall": list(recall_metrics(ranks, n, curve_ks)["recall_at"].values()),
        },
    }


def retrieval_similarities(
    scan_vecs: np.ndarray, scan_ids: list[str], corpus, tok, text_encoder=None
) -> tuple[np.ndarray, list[str]]:
    """Cosine similarities (scans x their descriptions) among the scans with corpus texts.

    A scan's description is its corpus entry: the mean sentence embedding of its text variants,
    centred with the training texts' mean (as in training). Returns (sims, kept scan ids); the
    matching pairs are on the diagonal.
    """
    texts = scan_texts(corpus, scan_ids)
    keep = [i for i, s in enumerate(scan_ids) if s in texts]
    if len(keep) < 2:
        raise FmrilmError("retrieval needs at least 2 held-out scans with corpus texts")

    encode = text_encoder or (lambda t: embed_texts(t, tok.config.text_encoder, tok.config.llm))
    sids, raw = scan_text_embeddings({scan_ids[i]: texts[scan_ids[i]] for i in keep}, encode)
    order = [sids.index(scan_ids[i]) for i in keep]
    text_vecs = tok.text_vectors(raw[order]).numpy()
    return np.asarray(scan_vecs)[keep] @ text_vecs.T, [scan_ids[i] for i in keep]


def scan_embeddings(fmri_tok, cohort, rows: pd.DataFrame, cache: dict | None = None) -> np.ndarray:
    """The tokenizer's text-space vector of every scan in ``rows`` (memoised in ``cache``)."""
    cache = {} if cache is None else cache
    for r in rows.itertuples():
        if r.scan_id not in cache:
            cache[r.scan_id] = fmri_tok.embed(
                cohort.series(r.scan_id), atlas=cohort.atlas(r.atlas), tr=float(r.tr)
            )
    return np.stack([cache[s] for s in rows["scan_id"]])


def retrieval_both_ways(fmri_tok, cohort, rows: pd.DataFrame, corpus) -> dict[str, Any]:
    """fMRI -> text and text -> fMRI ranks among ``rows`` (scans with corpus texts)."""
    vecs = scan_embeddings(fmri_tok, cohort, rows)
    sims, _ = retrieval_similarities(vecs, rows["scan_id"].tolist(), corpus, fmri_tok)
    return {
        name: report_metrics(retrieval_ranks(s))
        for name, s in (("fmri_to_text", sims), ("text_to_fmri", sims.T))
    }
