"""Stage 3 recipe: multi-task instruction tuning of a stage-2 model (``fmrilm instruct``).

stage-2 model (LoRA adapters + fMRI tables) -> codes of the training split -> instruction
examples (:func:`fmrilm.tasks.build_examples`: single and multi-question prompts, optional
acquisition context; a share turned into few-shot prompts with exemplars from *other training
subjects*) -> the same training loop as stage 2 (:func:`fmrilm.training.train_joint`,
resumable, torchrun-ready) with the ``instruct`` objective (loss on the answer only) plus a
little text replay -> a model folder that :meth:`fmrilm.model.fusion.FMRILM.from_pretrained`
loads, whose ``config.json`` lists the tasks it was tuned on (``instruct.tasks``) so that
evaluation can tell trained tasks from zero-shot ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmrilm.config import InstructConfig, to_dict
from fmrilm.corpus.build import Corpus
from fmrilm.data.cohort import Cohort
from fmrilm.errors import FmrilmError
from fmrilm.io import write_json
from fmrilm.model.fusion import FMRILM, save_model
from fmrilm.model.replay import load_replay
from fmrilm.runtime import finish_distributed
from fmrilm.tasks import as_corpus_view, build_examples
from fmrilm.tokenizer.codes import encode_split
from fmrilm.training import instruct_sampler, start_run, train_joint
from fmrilm.training.instruct import instruct_inputs, training_tasks


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
    tasks, held = training_tasks(cohort, config, corpus_obj)
    log(f"stage 3: tasks {', '.join(t.name for t in tasks)}; held out: {held or 'none'}")
    examples = build_examples(
        cohort, tasks, "train", multi_question=config.multi_question,
        context_prob=config.context_prob, seed=config.seed, corpus=corpus_view,
        descriptor_prob=config.descriptor_prob,
    )  # fmt: skip
    codes = encode_split(model.fmri_tokenizer, cohort, "train", progress=progress)
    replay = load_replay("train") if config.replay_weight > 0 else []
    log(f"{len(examples)} instruction examples from {len(codes)} training scans")
    sampler = instruct_sampler(
        config, model, model.text_tokenizer, cohort, tasks, examples, codes, replay, corpus_view
    )
    inputs = instruct_inputs(model_dir, cohort, codes, corpus)
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
                "held_out_tasks": held,
                "from": str(model_dir),
            }
        }
        save_model(model, out, model.pretrain_config, model.fmri_tokenizer, extra=stage3)
        write_json(out / "training.json", summary)
    finish_distributed()
    log(f"saved the instruction-tuned model to {out} ({summary['seconds']} s)")
    return summary
