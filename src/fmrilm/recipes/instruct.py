"""Stage 3 recipe: multi-task instruction tuning of a stage-2 model (``fmrilm instruct``).

stage-2 model (LoRA adapters + fMRI tables) -> codes of the training split -> instruction
examples (:func:`fmrilm.instruct.build_examples`: single and multi-question prompts, optional
acquisition context; a share turned into few-shot prompts with exemplars from *other training
subjects*) -> the same training loop as stage 2 (:func:`fmrilm.recipes.pretrain.train_joint`,
resumable, torchrun-ready) with the ``instruct`` objective (loss on the answer only) plus a
little text replay -> a model folder that :meth:`fmrilm.model.fusion.FMRILM.from_pretrained`
loads, whose ``config.json`` lists the tasks it was tuned on (``instruct.tasks``) so that
evaluation can tell trained tasks from zero-shot ones.

Each scan enters a prompt as ``span_patches`` time steps of one window: a random window and
start in training, the first ones in evaluation (:func:`scan_span`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.config import InstructConfig, to_dict
from fmrilm.errors import FmrilmError


def scan_span(
    codes: np.ndarray, span_patches: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``span_patches`` complete time steps of one window of a scan's codes (windows, R, P).

    With ``rng`` a random window and start (training); without, the first window from its
    first step (evaluation: deterministic).
    """
    if rng is None:
        w = codes[0]
        start = 0
    else:
        w = codes[int(rng.integers(len(codes)))]
    valid = int((w[0] >= 0).sum())
    n = min(span_patches, valid)
    if rng is not None:
        start = int(rng.integers(0, valid - n + 1))
    return w[:, start : start + n]


def scan_steps(codes: np.ndarray, max_steps: int | None = None) -> np.ndarray:
    """Every complete time step of a scan's codes (windows, R, P), in time order: (R, steps).

    Windows do not overlap (:meth:`FMRITokenizer.windows`), so their valid steps concatenated
    are the whole scan; ``max_steps`` keeps the first ones.
    """
    steps = np.concatenate([w[:, : int((w[0] >= 0).sum())] for w in codes], axis=1)
    return steps if max_steps is None else steps[:, :max_steps]


def encode_split(fmri_tok, cohort, split: str | None, progress: bool = False) -> dict[str, Any]:
    """Codes (windows, ROIs, patches) of every scan of ``split`` (None: all), by scan id."""
    from fmrilm.recipes.pretrain import encode_scans

    rows = cohort.manifest if split is None else cohort.split(split)
    if rows.empty:
        raise FmrilmError(f"{cohort.root}: the {split} split has no scans")
    return {s.scan_id: s.codes for s in encode_scans(fmri_tok, cohort, rows, progress=progress)}


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
    from fmrilm.instruct import fewshot_exemplars, make_example
    from fmrilm.model.objectives import replay_example
    from fmrilm.model.qa import render

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


def run_instruct(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    config: InstructConfig,
    corpus: str | Path | None = None,
    *,
    progress: bool = True,
    device: str = "auto",
    fsdp: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``fmrilm instruct``: instruction-tune the stage-2 model in ``model_dir`` into ``out``.

    ``fsdp`` (under torchrun): shard the frozen backbone across the processes, as in stage 2.
    """
    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.instruct import build_examples, resolve_tasks
    from fmrilm.instruct.tasks import as_corpus_view
    from fmrilm.io import digest_ids, sha256_file, write_json
    from fmrilm.model.fusion import FMRILM, save_model
    from fmrilm.recipes.pretrain import start_run, train_joint

    out, t0, rank, world, dev, log = start_run(config, out, device, log)
    model = FMRILM.from_pretrained(model_dir)
    if model.projector is not None:
        raise FmrilmError(
            f"{model_dir}: stage 3 needs a model with discrete fMRI input (fmri_input=discrete)"
        )
    model.to(dev)  # the LoRA adapters and fMRI tables stay trainable; train_joint sets train()
    cohort = Cohort(data)
    corpus_obj = Corpus(corpus) if corpus is not None else None
    if config.descriptor_prob > 0 and corpus_obj is None:
        raise FmrilmError(
            f"descriptor_prob={config.descriptor_prob} needs --corpus (the scans' descriptor "
            "records); pass --corpus or set descriptor_prob=0"
        )
    corpus_view = as_corpus_view(corpus_obj)
    names = list(config.tasks) or None
    tasks = resolve_tasks(cohort, names, corpus_obj)
    held = set(config.held_out_tasks)
    try:
        resolve_tasks(cohort, sorted(held), corpus_obj)
    except FmrilmError as exc:
        raise FmrilmError(f"held_out_tasks: {exc}") from None
    tasks = [t for t in tasks if t.name not in held]
    if not tasks:
        raise FmrilmError("no task left to train on (every task is held out)")
    log(f"stage 3: tasks {', '.join(t.name for t in tasks)}; held out: {sorted(held) or 'none'}")
    examples = build_examples(
        cohort,
        tasks,
        "train",
        multi_question=config.multi_question,
        context_prob=config.context_prob,
        seed=config.seed,
        corpus=corpus_view,
        descriptor_prob=config.descriptor_prob,
    )
    codes = encode_split(model.fmri_tokenizer, cohort, "train", progress=progress)
    replay: list[str] = []
    if config.replay_weight > 0:
        from fmrilm.model.replay import load_replay

        replay = load_replay("train")
    log(f"{len(examples)} instruction examples from {len(codes)} training scans")
    sampler = instruct_sampler(
        config, model, model.text_tokenizer, cohort, tasks, examples, codes, replay, corpus_view
    )
    inputs = {
        "model_sha256": sha256_file(Path(model_dir) / "trainable.safetensors"),
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(codes),
    }
    if corpus is not None:
        inputs["corpus_sha256"] = sha256_file(Path(corpus) / "corpus.json")
    summary = train_joint(
        model, model.text_tokenizer, [], replay, config, out, inputs=inputs, sampler=sampler,
        progress=progress, fsdp=fsdp, log=log, desc="stage 3",
    )  # fmt: skip
    summary.update(seconds=round(time.perf_counter() - t0, 1), processes=world, inputs=inputs)
    if rank == 0:
        stage3 = {
            "instruct": {
                "config": to_dict(config),
                "tasks": [t.to_dict() for t in tasks],
                "held_out_tasks": sorted(held),
                "from": str(model_dir),
            }
        }
        save_model(model, out, model.pretrain_config, model.fmri_tokenizer, extra=stage3)
        write_json(out / "training.json", summary)
    from fmrilm.runtime import finish_distributed

    finish_distributed()
    log(f"saved the instruction-tuned model to {out} ({summary['seconds']} s)")
    return summary
