"""Stage 2 recipe: joint fMRI-language modelling with LoRA (``fmrilm pretrain``).

setup (fMRI tokenizer, backbone + LoRA, codes of the training scans, corpus texts, replay
text) -> train (:func:`fmrilm.training.train_joint`: a micro-batch per objective per step;
resumable, torchrun-ready) -> save (:func:`fmrilm.model.fusion.save_model`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmrilm.config import PretrainConfig
from fmrilm.corpus.build import Corpus
from fmrilm.data.cohort import Cohort
from fmrilm.errors import FmrilmError
from fmrilm.io import write_json
from fmrilm.model.fusion import build_model, save_model
from fmrilm.model.replay import load_replay
from fmrilm.runtime import finish_distributed
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.codes import encode_scans
from fmrilm.training import start_run, train_joint, training_inputs


def run_pretrain(
    tokenizer_dir: str | Path,
    data: str | Path,
    out: str | Path,
    config: PretrainConfig,
    corpus: str | Path | None = None,
    *,
    progress: bool = True,
    device: str = "auto",
    fsdp: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``fmrilm pretrain``: codes of the training split + corpus texts + replay -> stage-2 model.

    ``device``: auto (this process's GPU under torchrun when CUDA is visible, else CPU), cpu
    or cuda. ``fsdp``: shard the frozen backbone across torchrun's processes.
    """
    out, t0, rank, world, dev, log = start_run(config, out, device, log)
    fmri_tok = FMRITokenizer.from_pretrained(tokenizer_dir)
    cohort = Cohort(data)
    corpus_obj = Corpus(corpus) if corpus is not None else None
    if config.description_weight > 0 and corpus_obj is None:
        raise FmrilmError("the description objective needs --corpus DIR (or description_weight=0)")
    scans = encode_scans(
        fmri_tok,
        cohort,
        cohort.split("train"),
        corpus_obj,
        progress=progress,
        with_vectors=config.fmri_input == "continuous",
    )
    replay = load_replay("train") if config.replay_weight > 0 else []
    model, text_tok = build_model(config, fmri_tok)
    model.to(dev)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log(
        f"stage 2: {config.llm}, {n_train / 1e6:.2f} M of {n_all / 1e6:.1f} M parameters train; "
        f"{len(scans)} training scans, {len(replay)} replay passages"
    )
    inputs = training_inputs(tokenizer_dir, cohort, corpus)
    summary = train_joint(
        model, text_tok, scans, replay, config, out, inputs=inputs, progress=progress,
        fsdp=fsdp, log=log,
    )  # fmt: skip
    summary["inputs"] = inputs
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["processes"] = world
    if rank == 0:
        save_model(model, out, config, fmri_tok)
        write_json(out / "training.json", summary)
    finish_distributed()
    log(f"saved stage-2 model to {out} ({summary['seconds']} s)")
    return summary
