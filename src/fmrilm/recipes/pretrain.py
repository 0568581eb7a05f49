"""Stage 2 recipe: joint fMRI-language modelling with LoRA (``fmrilm pretrain``).

setup (fMRI tokenizer, backbone + LoRA, codes of the training scans, corpus texts, replay
text) -> train (a micro-batch per objective per step) -> save (:func:`fmrilm.model.fusion.save_model`).

* Resumable: the trainable weights, AdamW state, step, history and the partial log sums are
  checkpointed atomically every ``ckpt_every`` steps and on Ctrl-C; rerunning the command
  continues. A checkpoint made with other settings or other inputs (cohort, training split,
  fMRI tokenizer, corpus) is refused.
* Distributed: under ``torchrun`` every process draws the same global batch from the step's
  seed and takes its share; gradients of the trainable weights (LoRA + fMRI tables, a few MB)
  are all-reduced, so N processes compute what one process does with the whole batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fmrilm.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint, versions
from fmrilm.config import PretrainConfig, to_dict
from fmrilm.errors import FmrilmError
from fmrilm.model.fusion import FMRILM, FmriVocab
from fmrilm.model.objectives import (
    collate,
    description_example,
    replay_example,
    temporal_example,
)
from fmrilm.runtime import autocast, deferred_sigint, seed_step, use_bf16

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class ScanCodes:
    scan_id: str
    codes: np.ndarray  # (windows, ROIs, patches), -1 = missing patch
    texts: list[str]
    vectors: np.ndarray | None = None  # (windows, ROIs, patches, dim): continuous ablation


def encode_scans(
    fmri_tok, cohort, rows, corpus=None, progress: bool = False, with_vectors: bool = False
) -> list[ScanCodes]:
    """Codes of every scan in ``rows`` (+ its descriptor texts when a corpus is given)."""
    from tqdm.auto import tqdm

    from fmrilm.recipes.train_tokenizer import scan_texts

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


def build_model(config: PretrainConfig, fmri_tok, backbone=None, text_tokenizer=None, spec=None):
    """The backbone with LoRA adapters and the fMRI vocabulary; only new weights train."""
    from peft import LoraConfig, get_peft_model

    from fmrilm.model.backbones import get_backbone

    if backbone is None:
        backbone, text_tokenizer, spec = get_backbone(config.llm)
    for p in backbone.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(spec.lora_targets),
        bias="none",
    )
    peft_model = get_peft_model(backbone, lora)
    vocab = FmriVocab.from_tokenizers(text_tokenizer, fmri_tok)
    hidden = backbone.get_input_embeddings().weight.shape[1]
    codes = None
    if fmri_tok.llm_dim:
        if fmri_tok.llm_dim != hidden:
            raise FmrilmError(
                f"the fMRI tokenizer projects codes to {fmri_tok.llm_dim} dimensions but "
                f"{config.llm} has {hidden}; retrain the tokenizer with llm={config.llm}"
            )
        codes = fmri_tok.code_embeddings_for_llm()
    projector = None
    if config.fmri_input == "continuous":
        import copy

        if fmri_tok.llm_dim:  # start from the tokenizer's trained projection into the LLM
            projector = copy.deepcopy(fmri_tok.to_llm)
        else:
            projector = torch.nn.Linear(fmri_tok.config.code_dim, hidden)
        for p in projector.parameters():
            p.requires_grad_(True)
    return FMRILM(peft_model, vocab, codes, projector), text_tokenizer


def _dist_rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun / torch.distributed, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_int(value: int, world: int, device=None) -> int:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(t)
    return int(t.item())


def lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def sample_step(
    step: int,
    config: PretrainConfig,
    scans: list[ScanCodes],
    replay: list[str],
    vocab: FmriVocab,
    tokenizer,
) -> dict[str, list]:
    """The examples of ``step`` per objective, a pure function of (seed, step)."""
    rng = np.random.default_rng([config.seed, step])

    def window(s: ScanCodes) -> tuple[np.ndarray, np.ndarray | None]:
        k = int(rng.integers(len(s.codes)))
        w = s.codes[k]
        valid = int((w[0] >= 0).sum())
        n = min(config.span_patches, valid)
        start = int(rng.integers(0, valid - n + 1))
        vec = None if s.vectors is None else s.vectors[k][:, start : start + n]
        return w[:, start : start + n], vec

    out: dict[str, list] = {}
    if config.temporal_weight > 0:
        pick = rng.choice(len(scans), size=config.batch_size)
        out["temporal"] = [temporal_example(vocab, *window(scans[i])) for i in pick]
    described = [s for s in scans if s.texts]
    if config.description_weight > 0 and described:
        pick = rng.choice(len(described), size=config.batch_size)
        out["description"] = []
        for i in pick:
            codes, vec = window(described[i])
            text = described[i].texts[int(rng.integers(len(described[i].texts)))]
            out["description"].append(
                description_example(vocab, tokenizer, codes, text, vectors=vec)
            )
    if config.replay_weight > 0 and replay:
        pick = rng.choice(len(replay), size=config.batch_size)
        out["replay"] = [replay_example(tokenizer, replay[i]) for i in pick]
    return out


def train_joint(
    model: FMRILM,
    tokenizer,
    scans: list[ScanCodes],
    replay: list[str],
    config: PretrainConfig,
    out: str | Path,
    *,
    inputs: dict[str, Any] | None = None,
    sampler: Callable[[int], dict[str, list]] | None = None,
    fsdp: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    desc: str = "stage 2",
) -> dict[str, Any]:
    """Train the trainable weights of ``model``; resumes from ``out/checkpoint.safetensors``.

    ``config``: a :class:`PretrainConfig`, or any config with the same optimisation fields and
    objective weights (stage 3's :class:`fmrilm.config.InstructConfig` adds ``instruct``).
    ``inputs``: identities of the training data (stored in every checkpoint; resuming with
    other inputs is refused). ``sampler(step)`` gives the step's examples per objective (a
    pure function of the step); by default :func:`sample_step` draws stage 2's objectives.
    ``fsdp`` (under torchrun) shards the frozen backbone weights across the processes
    (:func:`fmrilm.runtime.shard_frozen_weights`); the model must not be used outside
    training afterwards in that process. Batches go to the device the model is on.
    """
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    kinds = ("temporal", "description", "replay", "instruct")
    weights = {k: float(getattr(config, f"{k}_weight", 0.0)) for k in kinds}
    new = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("fmri_")]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fmri_")]
    optimizer = torch.optim.AdamW(
        [
            {"params": lora, "lr": config.lr, "base_lr": config.lr},
            {"params": new, "lr": config.new_params_lr, "base_lr": config.new_params_lr},
        ],
        weight_decay=config.weight_decay,
    )
    start, history, pending = 0, [], None
    inputs = dict(inputs or {})
    if ckpt.exists():
        meta = read_checkpoint_meta(ckpt)
        if meta.get("inputs", {}) != inputs:
            diff = sorted(
                k for k in set(inputs) | set(meta.get("inputs", {}))
                if meta.get("inputs", {}).get(k) != inputs.get(k)
            )  # fmt: skip
            raise FmrilmError(
                f"{out}: its checkpoint was trained on other inputs ({', '.join(diff)}); resume "
                "with the same tokenizer, cohort and corpus or choose another --out"
            )
        saved = {
            k: v for k, v in meta["config"].items() if k not in ("steps", "log_every", "ckpt_every")
        }
        now = {
            k: v
            for k, v in to_dict(config).items()
            if k not in ("steps", "log_every", "ckpt_every")
        }
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise FmrilmError(f"{out}: checkpoint trained with other settings ({', '.join(diff)})")
        info = load_checkpoint(ckpt, model, optimizer)
        start, history = int(info["step"]), list(info["history"])
        pending = info.get("log_sums")
        log(f"resuming from {ckpt} at step {start}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dev = model.fmri_embed.weight.device
    bf16 = use_bf16(config.bf16, str(dev))
    trainable = lora + new
    rank, world = _dist_rank_world()
    if world > 1:  # every process starts from rank 0's weights
        for p in trainable:
            torch.distributed.broadcast(p.data, src=0)
    if fsdp:
        if world < 2:
            raise FmrilmError("--fsdp shards weights across processes: start with torchrun")
        from fmrilm.runtime import shard_frozen_weights

        shard_frozen_weights(model, model._base().get_decoder().layers, set(trainable))
    # loss sums of the current log interval; kept in checkpoints so a resumed run logs the
    # same numbers as an uninterrupted one
    sums = torch.zeros(2 * len(kinds) + 2, dtype=torch.float64)
    if pending is not None and len(pending) == len(sums):
        sums = torch.tensor(pending, dtype=torch.float64)
    n_tokens, t0, n_steps = 0, time.perf_counter(), 0

    def checkpoint(step: int) -> None:
        meta = {
            "config": to_dict(config),
            "inputs": inputs,
            "step": step,
            "history": history,
            "log_sums": sums.tolist(),
        }
        save_checkpoint(ckpt, model, optimizer, meta, trainable_only=True)

    from tqdm.auto import tqdm

    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=desc,
        unit="step",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    with deferred_sigint() as interrupted, bar:
        for step in range(start, config.steps):
            if interrupted():
                if rank == 0:
                    checkpoint(step)
                    log(f"interrupted: checkpoint at step {step} in {ckpt}; run again to resume")
                raise KeyboardInterrupt
            seed_step(config.seed, step)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, config)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            # every process draws the same global batch and takes its share: rank::world
            if sampler is None:
                batches = sample_step(step, config, scans, replay, model.vocab, tokenizer)
            else:
                batches = sampler(step)
            step_sums = torch.zeros_like(sums)
            for kind, examples in batches.items():
                if weights.get(kind, 0.0) <= 0:
                    continue
                mine = examples[rank::world]
                chunks = [
                    {
                        k: v.to(dev)
                        for k, v in collate(
                            [mine[i] for i in c], pad, config.max_len, model.vocab
                        ).items()
                    }
                    for c in np.array_split(np.arange(len(mine)), config.grad_accum)
                    if len(c)
                ]
                key = "fmri" if kind == "temporal" else "text"
                which = 1 if kind == "temporal" else 0
                # the loss is a mean over the global batch's target tokens of this kind, so one
                # process with the whole batch and N processes with a share each agree exactly
                local = sum(
                    int(
                        model.target_masks(b["ids"], b["attention_mask"], b["loss_mask"])[
                            which
                        ].sum()
                    )
                    for b in chunks
                )
                total = _all_reduce_int(local, world, dev)
                if total == 0:
                    continue
                k = kinds.index(kind)
                for b in chunks:
                    with autocast(bf16, dev.type):
                        res = model(b["ids"], b["attention_mask"], b["loss_mask"], b.get("vectors"))
                    n_tokens += int(b["attention_mask"].sum())
                    if f"{key}_loss_sum" not in res:
                        continue
                    (weights[kind] * res[f"{key}_loss_sum"] / total).backward()
                    step_sums[2 * k] += float(res[f"{key}_loss_sum"].detach())
                    step_sums[2 * k + 1] += float(res[f"{key}_tokens"])
                    if kind == "temporal":
                        step_sums[-2] += float(res["fmri_correct"])
            if world > 1:
                for p in trainable:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    torch.distributed.all_reduce(p.grad)
                step_sums = step_sums.to(dev)
                torch.distributed.all_reduce(step_sums)
                step_sums = step_sums.cpu()
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            sums += step_sums
            n_steps += 1
            done = step + 1
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                dt = time.perf_counter() - t0
                entry: dict[str, Any] = {"step": done}
                for k, kind in enumerate(kinds):
                    if sums[2 * k + 1] > 0:
                        entry[f"{kind}_loss"] = round(float(sums[2 * k] / sums[2 * k + 1]), 4)
                if sums[1] > 0:
                    entry["fmri_acc"] = round(float(sums[-2] / sums[1]), 4)
                entry["tokens_per_s"] = round(n_tokens * world / max(dt, 1e-9), 1)
                history.append(entry)
                if rank == 0:
                    line = " | ".join(f"{k} {v}" for k, v in entry.items())
                    bar.write(line) if progress else log(line)
                sums.zero_()
                n_tokens, t0, n_steps = 0, time.perf_counter(), 0
            if (done % config.ckpt_every == 0 or done == config.steps) and rank == 0:
                checkpoint(done)
            if world > 1 and (done % config.ckpt_every == 0 or done == config.steps):
                torch.distributed.barrier()
    return {"config": to_dict(config), "versions": versions(), "history": history}


def training_inputs(tokenizer_dir, cohort, corpus) -> dict[str, Any]:
    """What a stage-2 run trains on, by identity: cohort + training split, tokenizer, corpus."""
    from fmrilm.io import digest_ids, sha256_file

    out: dict[str, Any] = {
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(cohort.split("train")["scan_id"]),
        "tokenizer_sha256": sha256_file(Path(tokenizer_dir) / "model.safetensors"),
    }
    if corpus is not None:
        out["corpus_sha256"] = sha256_file(Path(corpus) / "corpus.json")
    return out


def start_run(config, out, device: str, log: Callable[[str], None]):
    """Common start of a training command: validated config, a free ``out``, torchrun's
    process group, the device; only rank 0 logs. Returns (out, t0, rank, world, device, log)."""
    from fmrilm.runtime import init_distributed, training_device

    config.validate()
    out = Path(out)
    if (out / "config.json").exists():
        raise FmrilmError(f"{out} already holds a model; choose another --out")
    t0 = time.perf_counter()
    rank, world = init_distributed()
    dev = training_device(device)
    if rank != 0:
        log = lambda line: None  # noqa: E731 -- only rank 0 reports
    return out, t0, rank, world, dev, log


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
    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.io import write_json
    from fmrilm.model.fusion import save_model
    from fmrilm.tokenizer import FMRITokenizer

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
    replay: list[str] = []
    if config.replay_weight > 0:
        from fmrilm.model.replay import load_replay

        replay = load_replay("train")
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
    from fmrilm.runtime import finish_distributed

    finish_distributed()
    log(f"saved stage-2 model to {out} ({summary['seconds']} s)")
    return summary
