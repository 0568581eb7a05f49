"""Adaptation to K shots: tune the model on K labelled training subjects of one task, then undo.

``lora`` tunes the LoRA adapters and fMRI tables; ``full`` every weight of the backbone too
(learning rate ``FULL_LR``). Both run the stage-3 training loop (:func:`fmrilm.training.train_joint`).
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np
import torch

from fmrilm.config import InstructConfig
from fmrilm.tasks import fewshot_exemplars, make_example
from fmrilm.training import instruct_sampler, train_joint

FULL_LR = 1e-4  # full fine-tuning: every backbone weight moves, so a 10x smaller step than LoRA


def adapt_to_shots(
    model,
    cohort,
    task,
    k: int,
    codes: dict[str, np.ndarray],
    span_patches: int,
    *,
    steps: int = 30,
    seed: int = 0,
    bf16: bool = False,
    corpus=None,
    full: bool = False,
) -> dict[str, Any]:
    """Tune ``model``'s trainable weights in place on K training subjects per class of ``task``.

    With ``corpus`` (a CorpusView) the prompts carry the descriptor line, as at evaluation.
    ``full`` tunes every weight of the backbone too (full fine-tuning, learning rate
    ``FULL_LR``) instead of the LoRA adapters and fMRI tables alone; the frozen weights are
    frozen again afterwards.

    The caller restores the weights afterwards (:func:`snapshot_weights` / :func:`restore_weights`).
    Returns the subjects used and the training history.
    """
    rng = np.random.default_rng([seed, k])
    rows = fewshot_exemplars(cohort, task, k, rng, exclude_subject=None)
    examples = [
        make_example(task, row, rng, corpus=corpus, describe=corpus is not None)
        for _ in range(3)
        for _, row in rows.iterrows()
    ]
    config = InstructConfig(
        tasks=[task.name], steps=steps, batch_size=min(4, len(examples)), warmup=2,
        span_patches=span_patches, replay_weight=0.0, fewshot_prob=0.0, multi_question=0.0,
        context_prob=0.0, descriptor_prob=0.0, lr=FULL_LR if full else 1e-3,
        log_every=steps, ckpt_every=steps, bf16="on" if bf16 else "off", seed=seed,
    )  # fmt: skip
    sampler = instruct_sampler(
        config, model, model.text_tokenizer, cohort, [task], examples, codes, []
    )
    frozen = [p for p in model.parameters() if not p.requires_grad] if full else []
    try:
        for p in frozen:
            p.requires_grad_(True)
        with tempfile.TemporaryDirectory() as tmp:
            summary = train_joint(
                model, model.text_tokenizer, [], [], config, tmp, sampler=sampler,
                log=lambda s: None,
            )  # fmt: skip
    finally:
        for p in frozen:
            p.requires_grad_(False)
    model.eval()
    return {"subjects": sorted(rows["subject"].tolist()), "history": summary["history"]}


def snapshot_weights(model, everything: bool = False) -> dict[str, Any]:
    """Copies of the trainable weights (``everything``: of all weights)."""
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if everything or p.requires_grad
    }


def restore_weights(model, snapshot: dict[str, Any]) -> None:
    """Copy ``snapshot`` (:func:`snapshot_weights`) back into ``model``."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snapshot:
                p.copy_(snapshot[n])
