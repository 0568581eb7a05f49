"""Stage 1 recipe: train the neural tokenizer on a cohort's training split.

setup (cohort) -> train (:func:`fmrilm.training.tokenizer.fit_tokenizer`, resumable) ->
evaluate on the validation split (:func:`fmrilm.evaluation.tokenizer.evaluate_tokenizer`) ->
save_pretrained. ``fmrilm tokenizer train`` calls :func:`train_tokenizer`.

Output folder::

    OUT/config.json, model.safetensors     the tokenizer (FMRITokenizer.from_pretrained(OUT))
    OUT/training.json                      resolved config, versions, history, timings, scores
    OUT/checkpoint.safetensors             last checkpoint (model + optimizer), for resume
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fmrilm.config import TokenizerConfig
from fmrilm.data.cohort import Cohort
from fmrilm.evaluation.tokenizer import evaluate_tokenizer
from fmrilm.io import write_json
from fmrilm.training.tokenizer import CHECKPOINT, eval_line, fit_tokenizer

TRAINING = "training.json"

__all__ = ["CHECKPOINT", "TRAINING", "train_tokenizer"]


def train_tokenizer(
    data: str | Path,
    out: str | Path,
    config: TokenizerConfig,
    corpus: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    text_encoder: Callable[[list[str]], np.ndarray] | None = None,
    llm_embeddings: torch.Tensor | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a tokenizer; returns the summary also written to training.json.

    ``text_encoder`` and ``llm_embeddings`` replace the frozen MiniLM / LLM (tests use small
    stand-ins); by default they follow ``config.text_encoder`` and ``config.llm``.
    """
    out = Path(out)
    emit = log or (lambda s: tqdm.write(s))
    cohort = Cohort(data)
    run = fit_tokenizer(
        cohort, out, config, corpus, progress=progress, log=emit, text_encoder=text_encoder,
        llm_embeddings=llm_embeddings,
    )  # fmt: skip
    summary = run.summary
    if evaluate and (cohort.manifest["split"] == "val").any():
        scores = evaluate_tokenizer(
            run.model,
            cohort,
            cohort.split("val"),
            corpus=run.corpus,
            text_encoder=text_encoder,
            progress=progress,
        )
        scores.pop("_r2")
        summary["validation"] = scores
        emit(eval_line("validation", scores))
    run.model.save_pretrained(
        out,
        extra={"training": {k: summary[k] for k in ("data", "corpus", "steps", "seconds")}},
    )
    write_json(out / TRAINING, summary)
    emit(f"saved tokenizer to {out} ({summary['seconds']:.0f} s)")
    return summary
