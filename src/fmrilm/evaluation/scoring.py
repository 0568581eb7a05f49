"""The model's answers to questions about scans, scored over each task's candidate answers.

* **constrained**: the log-likelihood of every valid candidate answer
  (:func:`fmrilm.model.qa.candidate_logprobs`); the softmax over candidates gives class
  probabilities (AUROC, calibration); a regression answer is the probability-weighted mean of
  the candidate grid;
* **free text**: greedy generation parsed by the task (:meth:`Task.parse`); an unparseable
  answer is *invalid* (None), never silently mapped to a class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fmrilm.errors import FmrilmError
from fmrilm.model.objectives import text_ids
from fmrilm.model.qa import answer_free, candidate_logprobs, render, softmax
from fmrilm.tasks import fewshot_exemplars, make_example

if TYPE_CHECKING:
    import pandas as pd


class ContextTooLong(FmrilmError):
    """An in-context prompt longer than the backbone can read."""


def prediction(task, p: np.ndarray):
    """The answer of candidate probabilities ``p``: the most likely class, or for regression
    the probability-weighted mean of the candidate grid."""
    if task.kind == "classification":
        return task.values[int(np.argmax(p))]
    return float(p @ np.asarray(task.grid, dtype=float))


def answer_rows(
    model,
    task,
    rows: pd.DataFrame,
    span_of: Callable[[str], np.ndarray],
    *,
    cohort=None,
    shots: int = 0,
    free_text: bool = True,
    bf16: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    corpus=None,
) -> dict[str, Any]:
    """The model's answers to ``task`` about every row: constrained and (optionally) free.

    With ``corpus`` (a CorpusView) every scan in the prompt carries its descriptor line.
    """
    tok = model.text_tokenizer
    cands = list(task.candidate_texts())
    rng = np.random.default_rng(seed)
    context = getattr(model._base().config, "max_position_embeddings", None)
    y_true, y_pred, proba, prompts = [], [], [], []
    t0 = time.perf_counter()
    for _, row in rows.iterrows():
        exemplars = None
        if shots:
            exemplars = fewshot_exemplars(cohort, task, shots, rng, exclude_subject=row["subject"])
        ex = make_example(
            task, row, rng, shots=exemplars, corpus=corpus, describe=corpus is not None
        )
        prompt = render(model, tok, ex.segments, span_of).ids
        if context and len(prompt) + 16 > context:
            raise ContextTooLong(
                f"{task.name}: a prompt of {len(prompt)} tokens (K={shots}) exceeds the "
                f"backbone's context of {context}"
            )
        p = softmax(candidate_logprobs(model, tok, prompt, cands, bf16=bf16))
        y_true.append(ex.labels[0])
        y_pred.append(prediction(task, p))
        proba.append(p)
        prompts.append(prompt)
    seconds = time.perf_counter() - t0
    out = {
        "y_true": y_true,
        "y_pred": y_pred,
        "proba": np.array(proba),
        "seconds": seconds,
        "prompt_tokens": int(np.mean([len(p) for p in prompts])),
    }
    if free_text:
        texts = []
        for b in range(0, len(prompts), batch_size):
            texts += answer_free(model, tok, prompts[b : b + batch_size], bf16=bf16)
        out["free_text"] = texts
        out["free_pred"] = [task.parse(t) for t in texts]
    return out


def answer_multi(
    model,
    tasks: list,
    rows: pd.DataFrame,
    span_of,
    *,
    bf16: bool = False,
    seed: int = 0,
    corpus=None,
) -> dict[str, Any]:
    """All ``tasks`` asked in one prompt per row ("1. ... 2. ..."), answered in order.

    Question i is scored over its candidates after the model's own answers to questions
    1..i-1 (as it would have written them), followed by a newline (the end of turn for the
    last one) -- the reply format the model was tuned on (:func:`format_answers`).
    """
    tok = model.text_tokenizer
    rng = np.random.default_rng(seed)
    newline = text_ids(tok, "\n")
    out = {t.name: {"y_true": [], "y_pred": [], "proba": []} for t in tasks}
    t0 = time.perf_counter()
    for _, row in rows.iterrows():
        ex = make_example(tasks, row, rng, corpus=corpus, describe=corpus is not None)
        prompt = render(model, tok, ex.segments, span_of).ids
        written = ""
        for i, name in enumerate(ex.tasks):
            task = next(t for t in tasks if t.name == name)
            prefix = prompt + text_ids(tok, f"{written}{i + 1}. ")
            last = i == len(ex.tasks) - 1
            p = softmax(
                candidate_logprobs(
                    model, tok, prefix, list(task.candidate_texts()), bf16=bf16,
                    end=None if last else newline,
                )
            )  # fmt: skip
            written += f"{i + 1}. {task.candidate_texts()[int(np.argmax(p))]}\n"
            out[name]["y_true"].append(ex.labels[i])
            out[name]["y_pred"].append(prediction(task, p))
            out[name]["proba"].append(p)
    out["seconds"] = time.perf_counter() - t0
    return out
