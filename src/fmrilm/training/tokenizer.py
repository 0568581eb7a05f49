"""Stage 1's training loop: the neural tokenizer on a cohort's training split.

Losses per step: reconstruction of the (scaled) ROI series, VQ commitment, optionally InfoNCE
against the scan's descriptor texts (contrastive alignment) and the adversarial alignment of
projected codes with the LLM's word embeddings. Resumable: model, optimizer, step, history and
the partial log interval are checkpointed atomically every ``ckpt_every`` steps and on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fmrilm.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint, versions
from fmrilm.config import TokenizerConfig, to_dict
from fmrilm.corpus.build import Corpus
from fmrilm.errors import FmrilmError
from fmrilm.io import digest_ids, read_json
from fmrilm.runtime import autocast, deferred_sigint, seed_step, use_bf16
from fmrilm.tokenizer.align import (
    dann_scale,
    embed_texts,
    grad_reverse,
    info_nce,
    llm_embedding_matrix,
)
from fmrilm.tokenizer.codes import scan_text_embeddings, scan_texts
from fmrilm.tokenizer.data import load_scans, sample_batch
from fmrilm.tokenizer.neural_tokenizer import CONFIG_FILE, FMRITokenizer
from fmrilm.tokenizer.quantizer import code_statistics
from fmrilm.training.common import check_resume, lr_factor

if TYPE_CHECKING:
    from fmrilm.data.cohort import Cohort

CHECKPOINT = "checkpoint.safetensors"
# the adversarial game's parameters, clipped apart from the tokenizer's own
ADVERSARIAL_PREFIXES = ("to_llm.", "discriminator.")


@dataclass
class TokenizerRun:
    """What :func:`fit_tokenizer` returns: the trained model, its summary, the opened corpus."""

    model: FMRITokenizer
    summary: dict[str, Any]
    corpus: Corpus | None


def lr_at(step: int, config: TokenizerConfig) -> float:
    """The tokenizer's learning rate at ``step`` (:func:`fmrilm.training.lr_factor`)."""
    return config.lr * lr_factor(step, config.steps, config.warmup)


def check_out_dir(out: Path, config: TokenizerConfig) -> dict[str, Any] | None:
    """None for a fresh run; the checkpoint's metadata when resuming; errors otherwise."""
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        meta = read_checkpoint_meta(ckpt)
        check_resume(out, meta, config)
        if int(meta["step"]) >= config.steps and (out / CONFIG_FILE).exists():
            raise FmrilmError(
                f"{out}: already holds a tokenizer trained for {meta['step']} steps; "
                f"raise steps to continue training or choose another --out"
            )
        return meta
    if (out / CONFIG_FILE).exists():
        info = read_json(out / CONFIG_FILE)
        raise FmrilmError(
            f"{out}: holds a {info.get('format', 'model')} without a checkpoint; choose another --out"
        )
    return None


def _text_targets(config, corpus, train_rows, encode_text, emit):
    """(opened corpus, scan id -> row, raw per-scan text vectors) for contrastive alignment."""
    if not config.contrastive:
        return None, {}, None
    if corpus is None:
        raise FmrilmError("contrastive alignment needs --corpus DIR (or set contrastive=false)")
    corpus_obj = Corpus(corpus)
    texts = scan_texts(corpus_obj, train_rows["scan_id"].tolist())
    if len(texts) < 2:
        raise FmrilmError(f"{corpus}: fewer than 2 training scans of this cohort have texts")
    emit(f"embedding {sum(map(len, texts.values()))} descriptor texts ({config.text_encoder})")
    sids, raw_text = scan_text_embeddings(texts, encode_text)
    return corpus_obj, {s: i for i, s in enumerate(sids)}, raw_text


def _param_sets(model: FMRITokenizer) -> list[list[torch.nn.Parameter]]:
    """Gradients are clipped per group: the adversarial game's gradients (projection and
    discriminator) must not shrink the tokenizer's own."""
    named = list(model.named_parameters())
    return [
        [p for n, p in named if not n.startswith(ADVERSARIAL_PREFIXES)],
        *([p for n, p in named if n.startswith(prefix)] for prefix in ADVERSARIAL_PREFIXES),
    ]


def _check_inputs(out: Path, meta: dict[str, Any], cohort: Cohort, train_rows) -> None:
    """Refuse to resume a checkpoint trained on another cohort or training split."""
    saved = {"inputs": {k: meta.get(k) for k in ("cohort_id", "train_scans")}}
    now = {
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(train_rows["scan_id"]),
    }
    check_resume(
        out, saved, None, now, inputs_hint="another cohort or training split",
        advice="resume with the same data or choose another --out",
    )  # fmt: skip


def fit_tokenizer(
    cohort: Cohort,
    out: str | Path,
    config: TokenizerConfig,
    corpus: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    text_encoder: Callable[[list[str]], np.ndarray] | None = None,
    llm_embeddings: torch.Tensor | None = None,
) -> TokenizerRun:
    """Train (or resume) a tokenizer on ``cohort``'s training split; saves nothing but
    checkpoints. ``text_encoder`` and ``llm_embeddings`` replace the frozen MiniLM / LLM (tests
    use small stand-ins); by default they follow ``config.text_encoder`` and ``config.llm``."""
    t_start = time.perf_counter()
    out = Path(out)
    config.validate()
    emit = log or (lambda s: tqdm.write(s))
    resume_meta = check_out_dir(out, config)
    train_rows = cohort.split("train")
    encode_text = text_encoder or (lambda t: embed_texts(t, config.text_encoder, config.llm))
    corpus_obj, text_rows, raw_text = _text_targets(config, corpus, train_rows, encode_text, emit)
    llm_e = None
    if config.adversarial:
        llm_e = llm_embeddings if llm_embeddings is not None else llm_embedding_matrix(config.llm)
    model = FMRITokenizer(
        config,
        text_dim=None if raw_text is None else raw_text.shape[1],
        llm_dim=None if llm_e is None else llm_e.shape[1],
    )
    texts_t = None
    if raw_text is not None:
        model.text_center.copy_(torch.from_numpy(raw_text.mean(0)))
        texts_t = model.text_vectors(raw_text)
    groups = load_scans(cohort, train_rows, config, model.prepare, text_rows, progress=progress)
    n_scans = sum(len(g.series) for g in groups.values())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    start, history, acc_state = 0, [], None
    if resume_meta is not None:
        _check_inputs(out, resume_meta, cohort, train_rows)
        info = load_checkpoint(out / CHECKPOINT, model, optimizer)
        start, history = int(info["step"]), list(info.get("history", []))
        acc_state = info.get("acc")
        emit(f"resuming from {out / CHECKPOINT} at step {start}")
    bf16 = use_bf16(config.bf16)
    emit(
        f"tokenizer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{n_scans} training scans ({', '.join(f'{k}: {len(g.series)}' for k, g in groups.items())}), "
        f"{config.steps} steps x {config.batch_size} windows, bf16 autocast {'on' if bf16 else 'off'}"
    )
    meta_base = {
        "config": to_dict(config),
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(train_rows["scan_id"]),
        "data": str(Path(cohort.root).resolve()),
        "corpus": None if corpus is None else str(Path(corpus).resolve()),
    }
    loop = _Loop(model, optimizer, config, groups, texts_t, llm_e, bf16)
    loop.run(out / CHECKPOINT, meta_base, start, history, acc_state, emit, progress)
    summary: dict[str, Any] = {
        "config": to_dict(config),
        "versions": versions(),
        "data": meta_base["data"],
        "corpus": meta_base["corpus"],
        "training_scans": n_scans,
        "steps": config.steps,
        "resumed_from": start or None,
        "seconds": round(time.perf_counter() - t_start, 1),
        "history": history,
    }
    return TokenizerRun(model, summary, corpus_obj)


class _Loop:
    """The stage-1 step: losses, clipping per parameter group, logging, checkpoints."""

    def __init__(self, model, optimizer, config, groups, texts_t, llm_e, bf16: bool):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.groups, self.texts_t, self.llm_e, self.bf16 = groups, texts_t, llm_e, bf16
        self.param_sets = _param_sets(model)
        self.acc = _Accumulator(config.codebook_size)

    def losses(self, step: int, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        model, config = self.model, self.config
        with autocast(self.bf16):
            res = model(batch.x, batch.xyz, batch.networks)
            losses = {"rec": F.mse_loss(res["recon"].float(), batch.x)}
            losses["commit"] = res["commit"]
            if self.texts_t is not None:
                has = batch.text >= 0
                if int(has.sum()) >= 2:
                    v = model.pooled_text_vector(res["q"][has])
                    losses["nce"] = info_nce(v, self.texts_t[batch.text[has]], model.logit_scale)
            if self.llm_e is not None:
                # the discriminator learns at full strength; the encoder and projection
                # get adversarial_weight x the DANN ramp of the adversarial gradient
                losses["adv"], acc_d = _adversarial(
                    model,
                    res["q"],
                    self.llm_e,
                    config.adversarial_weight * dann_scale(step / config.steps),
                    config.adversarial_noise,
                    config.adversarial_mode,
                )
                self.acc.add("disc_acc", acc_d)
        loss = (
            losses["rec"]
            + config.commitment * losses["commit"]
            + config.contrastive_weight * losses.get("nce", torch.zeros(()))
            + losses.get("adv", torch.zeros(()))
        )
        if not torch.isfinite(loss):
            raise FmrilmError(
                f"loss is {float(loss)} at step {step} (scans {batch.scan_ids[:3]}); "
                "lower lr or check the data"
            )
        return loss, losses, res

    def run(self, ckpt, meta_base, start, history, acc_state, emit, progress) -> None:
        config, model, optimizer, acc = self.config, self.model, self.optimizer, self.acc
        if acc_state is not None:  # the part of a log interval done before the interruption
            acc.load(acc_state)

        def checkpoint(step: int) -> None:
            meta = {**meta_base, "step": step, "history": history, "acc": acc.state()}
            save_checkpoint(ckpt, model, optimizer, meta)

        bar = tqdm(total=config.steps, initial=start, desc="tokenizer", disable=not progress)
        with deferred_sigint() as interrupted:
            for step in range(start, config.steps):
                if interrupted():
                    checkpoint(step)
                    bar.close()
                    emit(f"interrupted: checkpoint at step {step} in {ckpt}; run again to resume")
                    raise KeyboardInterrupt
                seed_step(config.seed, step)
                batch = sample_batch(self.groups, config, step)
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(step, config)
                model.train()
                loss, losses, res = self.losses(step, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for params in self.param_sets:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                acc.update(loss, losses, res["ids"], len(batch.x))
                bar.update(1)
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    entry = acc.flush(done, lr_at(step, config))
                    history.append(entry)
                    emit(log_line(entry, config.steps))
                if done % config.ckpt_every == 0 or done == config.steps:
                    checkpoint(done)
        bar.close()


def _adversarial(
    model: FMRITokenizer,
    q: torch.Tensor,
    words: torch.Tensor,
    weight: float,
    noise: float = 0.0,
    mode: str = "nonsaturating",
    n: int = 1024,
) -> tuple[torch.Tensor, float]:
    """Adversarial alignment of projected code vectors with the LLM's word embeddings.

    The discriminator always trains at full strength to tell projected codes (label 0) from
    words (label 1). The projection (not the encoder) gets, scaled by ``weight``:

    * ``grl``: the discriminator's gradient, reversed (gradient-reversal layer, Ganin &
      Lempitsky 2015) -- this vanishes once the discriminator is confident;
    * ``nonsaturating``: the gradient of ``-log D(code)`` through a frozen copy of the
      discriminator (Goodfellow et al., 2014), which stays informative when it is confident.

    ``noise`` adds Gaussian instance noise (in units of the words' per-dimension standard
    deviation) to both sides: projected codes lie on a ``code_dim``-dimensional manifold, words
    fill the space, and without noise the discriminator separates them perfectly
    (Sønderby et al., 2016).
    """
    flat = q.reshape(-1, q.shape[-1])
    pick = torch.randint(0, flat.shape[0], (min(n, flat.shape[0]),))
    # detached: the adversary shapes the projection only; measured, letting its gradient into
    # the encoder collapsed the commitment loss and halved the codebook usage
    fake = model.to_llm(flat[pick].detach()).float()
    real = words[torch.randint(0, words.shape[0], (len(pick),))]
    sd = noise * words.std(0)
    if noise > 0:
        fake = fake + sd * torch.randn_like(fake)
        real = real + sd * torch.randn_like(real)
    labels = torch.cat([torch.zeros(len(pick)), torch.ones(len(pick))])
    disc = model.discriminator
    if mode == "grl":
        logits = disc(torch.cat([grad_reverse(fake, weight), real]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    else:
        logits = disc(torch.cat([fake.detach(), real]))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        frozen = {k: v.detach() for k, v in disc.named_parameters()}
        g_logits = torch.func.functional_call(disc, frozen, (fake,))
        loss = loss + weight * F.binary_cross_entropy_with_logits(
            g_logits.float(), torch.ones(len(pick))
        )
    acc = float(((logits.detach() > 0).float() == labels).float().mean())
    return loss, acc


class _Accumulator:
    """Running means of losses, code counts and throughput between two log lines."""

    def __init__(self, codebook_size: int):
        self.size = codebook_size
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.windows = 0
        self.counts = torch.zeros(self.size, dtype=torch.long)
        self.t0 = time.perf_counter()

    def state(self) -> dict[str, Any]:
        return {
            "sums": self.sums,
            "n": self.n,
            "windows": self.windows,
            "counts": self.counts.tolist(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.n, self.windows = dict(state["sums"]), state["n"], state["windows"]
        self.counts = torch.tensor(state["counts"], dtype=torch.long)

    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value

    def update(self, loss, losses, ids, n_windows) -> None:
        self.add("loss", float(loss.detach()))
        for k, v in losses.items():
            self.add(k, float(v.detach()))
        self.counts += torch.bincount(ids.reshape(-1).cpu(), minlength=self.size)
        self.n += 1
        self.windows += n_windows

    def flush(self, step: int, lr: float) -> dict[str, Any]:
        dt = time.perf_counter() - self.t0
        entry = {"step": step, **{k: round(v / self.n, 5) for k, v in self.sums.items()}}
        entry.update(code_statistics(self.counts))
        entry["windows_per_s"] = round(self.windows / max(dt, 1e-9), 1)
        entry["lr"] = lr
        self._reset()
        return entry


def log_line(e: dict[str, Any], steps: int) -> str:
    parts = [f"step {e['step']}/{steps}", f"loss {e['loss']:.4f}", f"rec {e['rec']:.4f}"]
    parts.append(f"commit {e['commit']:.4f}")
    if "nce" in e:
        parts.append(f"nce {e['nce']:.3f}")
    if "adv" in e:
        parts.append(f"adv {e['adv']:.3f} (disc acc {e.get('disc_acc', float('nan')):.2f})")
    parts.append(f"codes {e['usage_pct']:.0f}% ppl {e['perplexity']:.0f}")
    parts.append(f"{e['windows_per_s']:.0f} win/s")
    parts.append(f"lr {e['lr']:.2e}")
    return " | ".join(parts)


def eval_line(name: str, s: dict[str, Any]) -> str:
    r2 = ", ".join(f"{a} {v:.3f}" for a, v in s["reconstruction_r2"].items())
    line = f"{name}: reconstruction R² {r2} | codes {s['codes']['usage_pct']:.0f}% ppl {s['codes']['perplexity']:.0f}"
    if "retrieval" in s:
        r = s["retrieval"]
        line += (
            f" | fMRI->text R@1 {r['R@1']:.3f} (chance {r['chance_R@1']:.3f}) R@5 {r['R@5']:.3f}"
        )
    return line
