"""The one training loop of stages 2 and 3 (and of eval-time adaptation to K shots).

:func:`train_joint` trains the trainable weights of an :class:`FMRILM` (LoRA adapters and the
fMRI tables) on the examples a sampler draws for each step:

* Resumable: the trainable weights, AdamW state, step, history and the partial log sums are
  checkpointed atomically every ``ckpt_every`` steps and on Ctrl-C; rerunning continues. A
  checkpoint made with other settings or other inputs is refused (:func:`check_resume`).
* Distributed: under ``torchrun`` every process draws the same global batch from the step's
  seed and takes its share; gradients of the trainable weights (a few MB) are all-reduced, so
  N processes compute what one process does with the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fmrilm.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint, versions
from fmrilm.config import PretrainConfig, to_dict
from fmrilm.errors import FmrilmError
from fmrilm.io import digest_ids, sha256_file
from fmrilm.model.objectives import (
    collate,
    description_example,
    pad_id,
    replay_example,
    temporal_example,
)
from fmrilm.runtime import (
    all_reduce_int,
    autocast,
    deferred_sigint,
    rank_world,
    seed_step,
    shard_frozen_weights,
    use_bf16,
)
from fmrilm.tokenizer.codes import ScanCodes, window_span
from fmrilm.training.common import check_resume, lr_factor

if TYPE_CHECKING:
    from fmrilm.data.cohort import Cohort
    from fmrilm.model.fusion import FMRILM
    from fmrilm.model.vocab import FmriVocab

CHECKPOINT = "checkpoint.safetensors"
KINDS = ("temporal", "description", "replay", "instruct")


def sample_step(
    step: int,
    config: PretrainConfig,
    scans: list[ScanCodes],
    replay: list[str],
    vocab: FmriVocab,
    tokenizer,
) -> dict[str, list]:
    """Stage 2's examples of ``step`` per objective, a pure function of (seed, step)."""
    rng = np.random.default_rng([config.seed, step])

    def window(s: ScanCodes) -> tuple[np.ndarray, np.ndarray | None]:
        k, start, n = window_span(s.codes, config.span_patches, rng)
        vec = None if s.vectors is None else s.vectors[k][:, start : start + n]
        return s.codes[k][:, start : start + n], vec

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


def training_inputs(tokenizer_dir, cohort: Cohort, corpus) -> dict[str, Any]:
    """What a stage-2 run trains on, by identity: cohort + training split, tokenizer, corpus."""
    out: dict[str, Any] = {
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(cohort.split("train")["scan_id"]),
        "tokenizer_sha256": sha256_file(Path(tokenizer_dir) / "model.safetensors"),
    }
    if corpus is not None:
        out["corpus_sha256"] = sha256_file(Path(corpus) / "corpus.json")
    return out


def _optimizer(model: FMRILM, config) -> tuple[torch.optim.Optimizer, list, list]:
    """AdamW over the LoRA weights (``lr``) and the new fMRI tables (``new_params_lr``)."""
    new = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("fmri_")]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("fmri_")]
    optimizer = torch.optim.AdamW(
        [
            {"params": lora, "lr": config.lr, "base_lr": config.lr},
            {"params": new, "lr": config.new_params_lr, "base_lr": config.new_params_lr},
        ],
        weight_decay=config.weight_decay,
    )
    return optimizer, lora, new


class _Run:
    """The state of one :func:`train_joint` call: model, optimizer, process share, log sums."""

    def __init__(self, model: FMRILM, tokenizer, config, ckpt: Path, inputs: dict[str, Any]):
        self.model, self.config, self.ckpt, self.inputs = model, config, ckpt, inputs
        self.weights = {k: float(getattr(config, f"{k}_weight", 0.0)) for k in KINDS}
        self.optimizer, lora, new = _optimizer(model, config)
        self.trainable = lora + new
        self.pad = pad_id(tokenizer)
        self.dev = model.fmri_embed.weight.device
        self.bf16 = use_bf16(config.bf16, str(self.dev))
        self.rank, self.world = rank_world()
        self.start, self.history = 0, []
        # loss sums of the current log interval; kept in checkpoints so a resumed run logs the
        # same numbers as an uninterrupted one: (loss sum, tokens) per kind, fMRI hits, spare
        self.sums = torch.zeros(2 * len(KINDS) + 2, dtype=torch.float64)
        self.n_tokens, self.t0 = 0, time.perf_counter()

    def resume(self, out: Path, log: Callable[[str], None]) -> None:
        if not self.ckpt.exists():
            return
        check_resume(out, read_checkpoint_meta(self.ckpt), self.config, self.inputs)
        info = load_checkpoint(self.ckpt, self.model, self.optimizer)
        self.start, self.history = int(info["step"]), list(info["history"])
        pending = info.get("log_sums")
        if pending is not None and len(pending) == len(self.sums):
            self.sums = torch.tensor(pending, dtype=torch.float64)
        log(f"resuming from {self.ckpt} at step {self.start}")

    def distribute(self, fsdp: bool) -> None:
        if self.world > 1:  # every process starts from rank 0's weights
            for p in self.trainable:
                torch.distributed.broadcast(p.data, src=0)
        if fsdp:
            if self.world < 2:
                raise FmrilmError("--fsdp shards weights across processes: start with torchrun")
            layers = self.model._base().get_decoder().layers
            shard_frozen_weights(self.model, layers, set(self.trainable))

    def checkpoint(self, step: int) -> None:
        meta = {
            "config": to_dict(self.config),
            "inputs": self.inputs,
            "step": step,
            "history": self.history,
            "log_sums": self.sums.tolist(),
        }
        save_checkpoint(self.ckpt, self.model, self.optimizer, meta, trainable_only=True)

    def _chunks(self, examples: list) -> list[dict[str, torch.Tensor]]:
        """This process's share of one kind's examples, in ``grad_accum`` padded batches."""
        mine = examples[self.rank :: self.world]
        cfg, vocab = self.config, self.model.vocab
        return [
            {
                k: v.to(self.dev)
                for k, v in collate([mine[i] for i in c], self.pad, cfg.max_len, vocab).items()
            }
            for c in np.array_split(np.arange(len(mine)), cfg.grad_accum)
            if len(c)
        ]

    def backward(self, batches: dict[str, list]) -> torch.Tensor:
        """Forward + backward of one step's examples; returns this process's loss sums."""
        step_sums = torch.zeros_like(self.sums)
        for kind, examples in batches.items():
            if self.weights.get(kind, 0.0) <= 0:
                continue
            chunks = self._chunks(examples)
            key = "fmri" if kind == "temporal" else "text"
            which = 1 if kind == "temporal" else 0
            # the loss is a mean over the global batch's target tokens of this kind, so one
            # process with the whole batch and N processes with a share each agree exactly
            masks = self.model.target_masks
            local = sum(
                int(masks(b["ids"], b["attention_mask"], b["loss_mask"])[which].sum())
                for b in chunks
            )
            total = all_reduce_int(local, self.world, self.dev)
            if total == 0:
                continue
            k = KINDS.index(kind)
            for b in chunks:
                with autocast(self.bf16, self.dev.type):
                    res = self.model(
                        b["ids"], b["attention_mask"], b["loss_mask"], b.get("vectors")
                    )
                self.n_tokens += int(b["attention_mask"].sum())
                if f"{key}_loss_sum" not in res:
                    continue
                (self.weights[kind] * res[f"{key}_loss_sum"] / total).backward()
                step_sums[2 * k] += float(res[f"{key}_loss_sum"].detach())
                step_sums[2 * k + 1] += float(res[f"{key}_tokens"])
                if kind == "temporal":
                    step_sums[-2] += float(res["fmri_correct"])
        return step_sums

    def update(self, step_sums: torch.Tensor) -> None:
        """All-reduce gradients and sums across processes, clip, step."""
        if self.world > 1:
            for p in self.trainable:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
            step_sums = step_sums.to(self.dev)
            torch.distributed.all_reduce(step_sums)
            step_sums = step_sums.cpu()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimizer.step()
        self.sums += step_sums

    def log_entry(self, done: int) -> dict[str, Any]:
        """The history entry of the log interval ending at step ``done``; resets the sums."""
        dt = time.perf_counter() - self.t0
        sums = self.sums
        entry: dict[str, Any] = {"step": done}
        for k, kind in enumerate(KINDS):
            if sums[2 * k + 1] > 0:
                entry[f"{kind}_loss"] = round(float(sums[2 * k] / sums[2 * k + 1]), 4)
        if sums[1] > 0:
            entry["fmri_acc"] = round(float(sums[-2] / sums[1]), 4)
        entry["tokens_per_s"] = round(self.n_tokens * self.world / max(dt, 1e-9), 1)
        self.history.append(entry)
        self.sums.zero_()
        self.n_tokens, self.t0 = 0, time.perf_counter()
        return entry


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
    run = _Run(model, tokenizer, config, out / CHECKPOINT, dict(inputs or {}))
    run.resume(out, log)
    run.distribute(fsdp)
    bar = tqdm(
        total=config.steps,
        initial=run.start,
        desc=desc,
        unit="step",
        disable=not progress or run.rank != 0,
        dynamic_ncols=True,
    )
    with deferred_sigint() as interrupted, bar:
        for step in range(run.start, config.steps):
            if interrupted():
                if run.rank == 0:
                    run.checkpoint(step)
                    log(
                        f"interrupted: checkpoint at step {step} in {run.ckpt}; run again to resume"
                    )
                raise KeyboardInterrupt
            seed_step(config.seed, step)
            for g in run.optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(step, config.steps, config.warmup)
            model.train()
            run.optimizer.zero_grad(set_to_none=True)
            # every process draws the same global batch and takes its share: rank::world
            if sampler is None:
                batches = sample_step(step, config, scans, replay, model.vocab, tokenizer)
            else:
                batches = sampler(step)
            run.update(run.backward(batches))
            done = step + 1
            bar.update(1)
            _after_step(run, done, bar, progress, log)
    return {"config": to_dict(config), "versions": versions(), "history": run.history}


def _after_step(run: _Run, done: int, bar, progress: bool, log: Callable[[str], None]) -> None:
    """Log every ``log_every`` steps, checkpoint every ``ckpt_every`` (and at the end)."""
    config = run.config
    if done % config.log_every == 0 or done == config.steps:
        entry = run.log_entry(done)
        if run.rank == 0:
            line = " | ".join(f"{k} {v}" for k, v in entry.items())
            bar.write(line) if progress else log(line)
    at_checkpoint = done % config.ckpt_every == 0 or done == config.steps
    if at_checkpoint and run.rank == 0:
        run.checkpoint(done)
    if run.world > 1 and at_checkpoint:
        torch.distributed.barrier()
