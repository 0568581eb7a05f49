"""Linear probes of what the model has read: the tokenizer's scan embeddings and the LLM state.

Both fit :func:`~fmrilm.evaluation.baselines.fit_probe` (the same nested-CV linear model as the
FC and descriptor baselines) on the training rows and score the held-out rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fmrilm.errors import FmrilmError
from fmrilm.evaluation.baselines import fit_probe
from fmrilm.evaluation.retrieval import scan_embeddings
from fmrilm.model.qa import prompt_state, render
from fmrilm.tasks import make_example


def embedding_probe(fmri_tok, cohort, task, train_rows, test_rows, n_boot: int, cache=None):
    """A linear probe on the tokenizer's text-space scan vectors (memoised in ``cache``)."""
    if not fmri_tok.text_dim:
        raise FmrilmError("--mode probe needs a tokenizer trained with the text alignment")
    X = scan_embeddings(fmri_tok, cohort, pd.concat([train_rows, test_rows]), cache)
    return fit_probe(X, task, train_rows, test_rows, n_boot)


def state_probe(
    model,
    task,
    train_rows,
    test_rows,
    span_of,
    *,
    n_boot: int,
    bf16: bool,
    corpus=None,
    progress: bool = False,
) -> dict[str, Any]:
    """A linear probe (:func:`linear_probe`) on :func:`prompt_state` of every row's zero-shot
    prompt: does the joint model's reading of the scan carry the label, whatever it answers?"""
    both = pd.concat([train_rows, test_rows])
    states = []
    for i, (_, row) in enumerate(
        tqdm(both.iterrows(), total=len(both), desc=f"{task.name} states", disable=not progress)
    ):
        rng = np.random.default_rng(i)  # the prompt's template, as a zero-shot question draws it
        ex = make_example(task, row, rng, corpus=corpus, describe=corpus is not None)
        prompt = render(model, model.text_tokenizer, ex.segments, span_of).ids
        states.append(prompt_state(model, prompt, bf16=bf16))
    return fit_probe(np.stack(states), task, train_rows, test_rows, n_boot)
