"""Cohort -> tokens: the codes of a cohort's scans and the helpers every stage slices them with.

A scan's codes are an array ``(windows, ROIs, patches)``; a short last window is padded with
-1 after its last complete time step (:meth:`FMRITokenizer.encode`). Stages 2 and 3 and the
evaluation all read codes through these helpers, so "the complete time steps of a window" is
computed in one place (:func:`complete_steps`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from fmrilm.errors import FmrilmError

if TYPE_CHECKING:
    import pandas as pd

    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.tokenizer.neural_tokenizer import FMRITokenizer


@dataclass
class ScanCodes:
    scan_id: str
    codes: np.ndarray  # (windows, ROIs, patches), -1 = missing patch
    texts: list[str]
    vectors: np.ndarray | None = None  # (windows, ROIs, patches, dim): continuous ablation


def complete_steps(window: np.ndarray) -> int:
    """Number of leading complete time steps of a window (ROIs, patches); -1 marks missing."""
    window = np.asarray(window)
    bad = (window < 0).any(axis=0)
    return int(np.argmax(bad)) if bad.any() else window.shape[1]


def scan_texts(corpus: Corpus, scan_ids: list[str]) -> dict[str, list[str]]:
    """Descriptor texts per scan from a corpus (scans skipped by the corpus have none)."""
    table = corpus.table.set_index("scan_id")
    out = {}
    for sid in scan_ids:
        if sid in table.index and not table.loc[sid, "skipped"]:
            texts = [str(t) for t in table.loc[sid, "texts"]]
            if texts:
                out[sid] = texts
    return out


def scan_text_embeddings(
    texts: dict[str, list[str]], encode: Callable[[list[str]], np.ndarray]
) -> tuple[list[str], np.ndarray]:
    """One raw vector per scan: the mean of its text variants' sentence embeddings."""
    sids = sorted(texts)
    vecs = encode([t for s in sids for t in texts[s]])
    out, i = [], 0
    for s in sids:
        out.append(vecs[i : i + len(texts[s])].mean(0))
        i += len(texts[s])
    return sids, np.stack(out).astype(np.float32)


def encode_scans(
    fmri_tok: FMRITokenizer,
    cohort: Cohort,
    rows: pd.DataFrame,
    corpus: Corpus | None = None,
    progress: bool = False,
    with_vectors: bool = False,
) -> list[ScanCodes]:
    """Codes of every scan in ``rows`` (+ its descriptor texts when a corpus is given)."""
    texts = scan_texts(corpus, rows["scan_id"].tolist()) if corpus is not None else {}
    out = []
    for r in tqdm(rows.itertuples(), total=len(rows), desc="encode", disable=not progress):
        tokens = fmri_tok.encode(
            cohort.series(r.scan_id),
            tr=float(r.tr),
            atlas=cohort.atlas(r.atlas),
            what=r.scan_id,
            with_vectors=with_vectors,
        )
        out.append(ScanCodes(r.scan_id, tokens.ids, texts.get(r.scan_id, []), tokens.vectors))
    return out


def encode_split(
    fmri_tok: FMRITokenizer, cohort: Cohort, split: str | None, progress: bool = False
) -> dict[str, Any]:
    """Codes (windows, ROIs, patches) of every scan of ``split`` (None: all), by scan id."""
    rows = cohort.manifest if split is None else cohort.split(split)
    if rows.empty:
        raise FmrilmError(f"{cohort.root}: the {split} split has no scans")
    return {s.scan_id: s.codes for s in encode_scans(fmri_tok, cohort, rows, progress=progress)}


def window_span(
    codes: np.ndarray, span_patches: int, rng: np.random.Generator | None = None
) -> tuple[int, int, int]:
    """(window, start, length) of ``span_patches`` complete time steps of a scan's codes.

    With ``rng`` a random window and start (training); without, the first window from its
    first step (evaluation: deterministic). The draws are the ones stage 2 and 3 have always
    made (window, then start), so a seeded run samples the same spans.
    """
    k = 0 if rng is None else int(rng.integers(len(codes)))
    valid = complete_steps(codes[k])
    n = min(span_patches, valid)
    start = 0 if rng is None else int(rng.integers(0, valid - n + 1))
    return k, start, n


def scan_span(
    codes: np.ndarray, span_patches: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``span_patches`` complete time steps of one window of a scan's codes (windows, R, P).

    With ``rng`` a random window and start (training); without, the first window from its
    first step (evaluation: deterministic).
    """
    k, start, n = window_span(codes, span_patches, rng)
    return codes[k][:, start : start + n]


def scan_steps(codes: np.ndarray, max_steps: int | None = None) -> np.ndarray:
    """Every complete time step of a scan's codes (windows, R, P), in time order: (R, steps).

    Windows do not overlap (:meth:`FMRITokenizer.windows`), so their valid steps concatenated
    are the whole scan; ``max_steps`` keeps the first ones.
    """
    steps = np.concatenate([w[:, : complete_steps(w)] for w in codes], axis=1)
    return steps if max_steps is None else steps[:, :max_steps]


def full_windows(tok: FMRITokenizer, x: np.ndarray) -> np.ndarray:
    """Non-overlapping full windows (n, window, R) of a prepared series."""
    w = tok.config.window
    n = x.shape[0] // w
    return x[: n * w].reshape(n, w, x.shape[1])
