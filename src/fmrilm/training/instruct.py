"""Stage 3's sampler: instruction examples (and a little text replay) for each training step.

Each scan enters a prompt as ``span_patches`` time steps of one window: a random window and
start in training (:func:`fmrilm.tokenizer.codes.scan_span`). A share of single-task examples
becomes few-shot prompts with exemplars from *other training subjects*.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmrilm.config import InstructConfig
from fmrilm.errors import FmrilmError
from fmrilm.io import digest_ids, sha256_file
from fmrilm.model.objectives import replay_example
from fmrilm.model.qa import render
from fmrilm.tasks import fewshot_exemplars, make_example, resolve_tasks
from fmrilm.tokenizer.codes import scan_span

if TYPE_CHECKING:
    from fmrilm.data.cohort import Cohort


def instruct_sampler(
    config: InstructConfig,
    model,
    tokenizer,
    cohort,
    tasks: list,
    examples: list,
    codes: dict[str, np.ndarray],
    replay: list[str],
    corpus=None,
) -> Callable[[int], dict[str, list]]:
    """``sampler(step)`` for :func:`train_joint`: a pure function of (seed, step)."""
    by_name = {t.name: t for t in tasks}
    fewshot_ok = {t.name for t in tasks if t.kind != "text" and t.label_from != "corpus_fact"}

    def sampler(step: int) -> dict[str, list]:
        rng = np.random.default_rng([config.seed, step, 3])

        def span_of(scan_id: str) -> np.ndarray:
            return scan_span(codes[scan_id], config.span_patches, rng)

        out: dict[str, list] = {"instruct": []}
        for i in rng.choice(len(examples), size=config.batch_size):
            ex = examples[int(i)]
            if (
                len(ex.tasks) == 1
                and ex.tasks[0] in fewshot_ok
                and rng.random() < config.fewshot_prob
            ):
                task = by_name[ex.tasks[0]]
                row = cohort.row(ex.scan_id)
                try:
                    shots = fewshot_exemplars(
                        cohort, task, config.fewshot_k, rng, exclude_subject=row["subject"]
                    )
                    described = corpus is not None and config.descriptor_prob > 0
                    ex = make_example(
                        task, row, rng, corpus=corpus, shots=shots,
                        describe=described and rng.random() < config.descriptor_prob,
                    )  # fmt: skip
                except FmrilmError:
                    pass  # too few training subjects in some class: keep the zero-shot form
            item = render(model, tokenizer, ex.segments, span_of, answer=ex.answer)
            if len(item.ids) > config.max_len:  # never cut off the answer: ask without exemplars
                ex = examples[int(i)]
                item = render(model, tokenizer, ex.segments, span_of, answer=ex.answer)
            out["instruct"].append(item)
        if config.replay_weight > 0 and replay:
            pick = rng.choice(len(replay), size=config.batch_size)
            out["replay"] = [replay_example(tokenizer, replay[int(j)]) for j in pick]
        return out

    return sampler


def training_tasks(cohort: Cohort, config: InstructConfig, corpus=None) -> tuple[list, list[str]]:
    """(tasks to tune on, held-out task names): ``config.tasks`` (default: every task the
    cohort can answer) minus ``config.held_out_tasks``, each validated by the registry."""
    tasks = resolve_tasks(cohort, list(config.tasks) or None, corpus)
    held = sorted(set(config.held_out_tasks))
    try:
        resolve_tasks(cohort, held, corpus)
    except FmrilmError as exc:
        raise FmrilmError(f"held_out_tasks: {exc}") from None
    tasks = [t for t in tasks if t.name not in held]
    if not tasks:
        raise FmrilmError("no task left to train on (every task is held out)")
    return tasks, held


def instruct_inputs(model_dir, cohort: Cohort, codes: dict, corpus=None) -> dict[str, Any]:
    """What a stage-3 run trains on, by identity: stage-2 weights, cohort + split, corpus."""
    inputs = {
        "model_sha256": sha256_file(Path(model_dir) / "trainable.safetensors"),
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(codes),
    }
    if corpus is not None:
        inputs["corpus_sha256"] = sha256_file(Path(corpus) / "corpus.json")
    return inputs
