"""Stage 1 recipe: train the neural tokenizer on a cohort's training split.

setup (cohort, corpus texts, LLM word embeddings) -> train (resumable) -> evaluate on the
validation split -> save_pretrained. ``fmrilm tokenizer train`` calls :func:`train_tokenizer`.

Output folder::

    OUT/config.json, model.safetensors     the tokenizer (FMRITokenizer.from_pretrained(OUT))
    OUT/training.json                      resolved config, versions, history, timings, scores
    OUT/checkpoint.safetensors             last checkpoint (model + optimizer), for resume
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fmrilm.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint, versions
from fmrilm.config import TokenizerConfig, to_dict
from fmrilm.errors import FmrilmError
from fmrilm.io import digest_ids, read_json, write_json
from fmrilm.runtime import autocast, deferred_sigint, seed_step, use_bf16
from fmrilm.tokenizer.align import (
    dann_scale,
    embed_texts,
    grad_reverse,
    info_nce,
    llm_embedding_matrix,
)
from fmrilm.tokenizer.data import load_scans, sample_batch
from fmrilm.tokenizer.neural_tokenizer import CONFIG_FILE, FMRITokenizer
from fmrilm.tokenizer.quantizer import code_statistics

CHECKPOINT = "checkpoint.safetensors"
TRAINING = "training.json"
# settings that may differ between a checkpoint and the resuming run
RESUMABLE_CHANGES = {"steps", "log_every", "ckpt_every"}


def lr_at(step: int, config: TokenizerConfig) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def scan_texts(corpus, scan_ids: list[str]) -> dict[str, list[str]]:
    """Descriptor texts per scan from a corpus (scans skipped by the corpus have none)."""
    table = corpus.table.set_index("scan_id")
    out = {}
    for sid in scan_ids:
        if sid in table.index and not table.loc[sid, "skipped"]:
            texts = [str(t) for t in table.loc[sid, "texts"]]
            if texts:
                out[sid] = texts
    return out


def scan_text_embeddings(
    texts: dict[str, list[str]], encode: Callable[[list[str]], np.ndarray]
) -> tuple[list[str], np.ndarray]:
    """One raw vector per scan: the mean of its text variants' sentence embeddings."""
    sids = sorted(texts)
    vecs = encode([t for s in sids for t in texts[s]])
    out, i = [], 0
    for s in sids:
        out.append(vecs[i : i + len(texts[s])].mean(0))
        i += len(texts[s])
    return sids, np.stack(out).astype(np.float32)


def train_tokenizer(
    data: str | Path,
    out: str | Path,
    config: TokenizerConfig,
    corpus: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    text_encoder: Callable[[list[str]], np.ndarray] | None = None,
    llm_embeddings: torch.Tensor | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a tokenizer; returns the summary also written to training.json.

    ``text_encoder`` and ``llm_embeddings`` replace the frozen MiniLM / LLM (tests use small
    stand-ins); by default they follow ``config.text_encoder`` and ``config.llm``.
    """
    from tqdm.auto import tqdm

    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort

    t_start = time.perf_counter()
    out = Path(out)
    config.validate()
    emit = log or (lambda s: tqdm.write(s))
    cohort = Cohort(data)
    ckpt_path = out / CHECKPOINT
    resume_meta = _check_out_dir(out, config)
    train_rows = cohort.split("train")

    # -- setup: text targets, LLM word embeddings, model ----------------------------------------
    text_rows: dict[str, int] = {}
    raw_text = texts_t = None
    corpus_obj = None
    encode_text = text_encoder or (lambda t: embed_texts(t, config.text_encoder, config.llm))
    if config.contrastive:
        if corpus is None:
            raise FmrilmError("contrastive alignment needs --corpus DIR (or set contrastive=false)")
        corpus_obj = Corpus(corpus)
        texts = scan_texts(corpus_obj, train_rows["scan_id"].tolist())
        if len(texts) < 2:
            raise FmrilmError(f"{corpus}: fewer than 2 training scans of this cohort have texts")
        emit(f"embedding {sum(map(len, texts.values()))} descriptor texts ({config.text_encoder})")
        sids, raw_text = scan_text_embeddings(texts, encode_text)
        text_rows = {s: i for i, s in enumerate(sids)}
    llm_e = None
    if config.adversarial:
        llm_e = llm_embeddings if llm_embeddings is not None else llm_embedding_matrix(config.llm)
    model = FMRITokenizer(
        config,
        text_dim=None if raw_text is None else raw_text.shape[1],
        llm_dim=None if llm_e is None else llm_e.shape[1],
    )
    if raw_text is not None:
        model.text_center.copy_(torch.from_numpy(raw_text.mean(0)))
        texts_t = model.text_vectors(raw_text)
    groups = load_scans(cohort, train_rows, config, model.prepare, text_rows, progress=progress)
    n_scans = sum(len(g.series) for g in groups.values())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    # gradients are clipped per group: the adversarial game's gradients (projection and
    # discriminator) must not shrink the tokenizer's own
    adversarial_prefixes = ("to_llm.", "discriminator.")
    param_sets = [
        [p for n, p in model.named_parameters() if not n.startswith(adversarial_prefixes)],
        *(
            [p for n, p in model.named_parameters() if n.startswith(prefix)]
            for prefix in adversarial_prefixes
        ),
    ]
    start, history, acc_state = 0, [], None
    if resume_meta is not None:
        if resume_meta.get("cohort_id") != cohort.meta.get("cohort_id") or resume_meta.get(
            "train_scans"
        ) != digest_ids(train_rows["scan_id"]):
            raise FmrilmError(
                f"{out}: its checkpoint was trained on another cohort or training split than "
                f"{data}; resume with the same data or choose another --out"
            )
        info = load_checkpoint(ckpt_path, model, optimizer)
        start, history = int(info["step"]), list(info.get("history", []))
        acc_state = info.get("acc")
        emit(f"resuming from {ckpt_path} at step {start}")
    bf16 = use_bf16(config.bf16)
    emit(
        f"tokenizer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"{n_scans} training scans ({', '.join(f'{k}: {len(g.series)}' for k, g in groups.items())}), "
        f"{config.steps} steps x {config.batch_size} windows, bf16 autocast {'on' if bf16 else 'off'}"
    )

    # -- train ----------------------------------------------------------------------------------
    meta_base = {
        "config": to_dict(config),
        "cohort_id": cohort.meta.get("cohort_id"),
        "train_scans": digest_ids(train_rows["scan_id"]),
        "data": str(Path(data).resolve()),
        "corpus": None if corpus is None else str(Path(corpus).resolve()),
    }
    acc = _Accumulator(config.codebook_size)
    if acc_state is not None:  # the part of a log interval done before the interruption
        acc.load(acc_state)
    step = start
    bar = tqdm(total=config.steps, initial=start, desc="tokenizer", disable=not progress)
    with deferred_sigint() as interrupted:
        for step in range(start, config.steps):
            if interrupted():
                save_checkpoint(
                    ckpt_path,
                    model,
                    optimizer,
                    {**meta_base, "step": step, "history": history, "acc": acc.state()},
                )
                bar.close()
                emit(f"interrupted: checkpoint at step {step} in {ckpt_path}; run again to resume")
                raise KeyboardInterrupt
            seed_step(config.seed, step)
            batch = sample_batch(groups, config, step)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, config)
            model.train()
            with autocast(bf16):
                res = model(batch.x, batch.xyz, batch.networks)
                losses = {"rec": F.mse_loss(res["recon"].float(), batch.x)}
                losses["commit"] = res["commit"]
                if texts_t is not None:
                    has = batch.text >= 0
                    if int(has.sum()) >= 2:
                        v = model.pooled_text_vector(res["q"][has])
                        losses["nce"] = info_nce(v, texts_t[batch.text[has]], model.logit_scale)
                if llm_e is not None:
                    # the discriminator learns at full strength; the encoder and projection
                    # get adversarial_weight x the DANN ramp of the adversarial gradient
                    losses["adv"], acc_d = _adversarial(
                        model,
                        res["q"],
                        llm_e,
                        config.adversarial_weight * dann_scale(step / config.steps),
                        config.adversarial_noise,
                        config.adversarial_mode,
                    )
                    acc.add("disc_acc", acc_d)
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
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for params in param_sets:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            acc.update(loss, losses, res["ids"], len(batch.x))
            bar.update(1)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                entry = acc.flush(done, lr_at(step, config))
                history.append(entry)
                emit(_log_line(entry, config.steps))
            if done % config.ckpt_every == 0 or done == config.steps:
                save_checkpoint(
                    ckpt_path,
                    model,
                    optimizer,
                    {**meta_base, "step": done, "history": history, "acc": acc.state()},
                )
    bar.close()
    train_seconds = time.perf_counter() - t_start

    # -- evaluate on the validation split and save -----------------------------------------------
    summary: dict[str, Any] = {
        "config": to_dict(config),
        "versions": versions(),
        "data": meta_base["data"],
        "corpus": meta_base["corpus"],
        "training_scans": n_scans,
        "steps": config.steps,
        "resumed_from": start or None,
        "seconds": round(train_seconds, 1),
        "history": history,
    }
    if evaluate and (cohort.manifest["split"] == "val").any():
        from fmrilm.tokenizer.evaluate import evaluate_tokenizer

        scores = evaluate_tokenizer(
            model,
            cohort,
            cohort.split("val"),
            corpus=corpus_obj,
            text_encoder=text_encoder,
            progress=progress,
        )
        scores.pop("_r2")
        summary["validation"] = scores
        emit(_eval_line("validation", scores))
    model.save_pretrained(
        out,
        extra={"training": {k: summary[k] for k in ("data", "corpus", "steps", "seconds")}},
    )
    write_json(out / TRAINING, summary)
    emit(f"saved tokenizer to {out} ({train_seconds:.0f} s)")
    return summary


def _check_out_dir(out: Path, config: TokenizerConfig) -> dict[str, Any] | None:
    """None for a fresh run; the checkpoint's metadata when resuming; errors otherwise."""
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        meta = read_checkpoint_meta(ckpt)
        saved, now = meta.get("config", {}), to_dict(config)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        diff = [k for k in diff if k not in RESUMABLE_CHANGES]
        if diff:
            raise FmrilmError(
                f"{out}: its checkpoint was trained with other settings ({', '.join(diff[:5])}); "
                "use the same config to resume or another --out"
            )
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


def _log_line(e: dict[str, Any], steps: int) -> str:
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


def _eval_line(name: str, s: dict[str, Any]) -> str:
    r2 = ", ".join(f"{a} {v:.3f}" for a, v in s["reconstruction_r2"].items())
    line = f"{name}: reconstruction R² {r2} | codes {s['codes']['usage_pct']:.0f}% ppl {s['codes']['perplexity']:.0f}"
    if "retrieval" in s:
        r = s["retrieval"]
        line += (
            f" | fMRI->text R@1 {r['R@1']:.3f} (chance {r['chance_R@1']:.3f}) R@5 {r['R@5']:.3f}"
        )
    return line
