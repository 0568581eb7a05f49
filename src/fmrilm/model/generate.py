"""Using a stage-2 model: describe fMRI in words, score temporal prediction, measure language.

* :func:`describe` / :func:`describe_batch`: the prompt of the fMRI -> description objective
  (:func:`fmrilm.model.objectives.description_example` without the answer) is embedded by
  :meth:`FMRILM.embed` and continued by the backbone's own ``generate`` on ``inputs_embeds``.
  The backbone under the peft wrapper carries the LoRA layers in place, so generating with it
  uses the adapters; every generated id is a text id (the LM head scores text only).
* :func:`code_predictions`: teacher-forced next-time-step prediction of fMRI codes on held-out
  spans, with the two references of issue 5 computed on the same targets: the unigram
  frequency of the training codes and copy-the-previous-time-step.
* :func:`text_perplexity`: token-weighted perplexity of plain text (language retention), for a
  bare backbone (before stage 2) or an :class:`FMRILM` (after: its adapted backbone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fmrilm.errors import FmrilmError
from fmrilm.model.objectives import (
    DESCRIBE,
    pad_id,
    prompt_parts,
    replay_example,
    span_vectors,
)
from fmrilm.runtime import autocast
from fmrilm.tokenizer.codes import complete_steps

if TYPE_CHECKING:
    from fmrilm.model.fusion import FMRILM

# ------------------------------------------------------------------------------------------
# fMRI -> text


def prompt_ids(model: FMRILM, text_tokenizer, codes: np.ndarray, instruction: str = DESCRIBE):
    """The ids of the description prompt for one window's codes (ROIs, patches)."""
    before, after = prompt_parts(text_tokenizer, instruction)
    return before + model.vocab.span(codes) + after


def _vector_input(model: FMRILM, ids: torch.Tensor, codes, vectors) -> torch.Tensor | None:
    """(B, L, dim) continuous inputs at the code positions of ``ids`` (the projector ablation).

    ``vectors``: per window an array (ROIs, patches, dim) aligned with its codes, or None for
    a model without a projector.
    """
    if getattr(model, "projector", None) is None:
        return None
    if vectors is None or len(vectors) != len(codes):
        raise FmrilmError(
            "this model reads continuous fMRI vectors (fmri_input=continuous): pass vectors=, "
            "one (ROIs, patches, dim) array per window"
        )
    flat = [span_vectors(np.asarray(c), np.asarray(v)) for c, v in zip(codes, vectors, strict=True)]
    out = torch.zeros((*ids.shape, flat[0].shape[-1]), device=ids.device)
    is_code = (ids >= model.vocab.text_size) & (ids < model.vocab.start)
    for i, f in enumerate(flat):
        pos = torch.nonzero(is_code[i]).squeeze(-1)
        if len(pos) != len(f):
            raise FmrilmError(f"window {i}: {len(f)} vectors for {len(pos)} code tokens")
        out[i, pos] = torch.from_numpy(f).to(out)
    return out


@torch.no_grad()
def describe_batch(
    model: FMRILM,
    text_tokenizer,
    codes: Sequence[np.ndarray],
    max_new_tokens: int = 160,
    greedy: bool = True,
    *,
    instruction: str = DESCRIBE,
    bf16: bool = False,
    return_stats: bool = False,
    vectors: Sequence[np.ndarray] | None = None,
    **generate_kwargs: Any,
):
    """Descriptions of several windows, generated together (prompts left-padded).

    ``vectors`` (one (ROIs, patches, dim) array per window) is needed by, and only by, a model
    of the continuous ablation (``fmri_input=continuous``).

    Returns a list of strings, or ``(strings, stats)`` with ``return_stats`` (``stats``: the
    number of generated tokens up to each end-of-sequence, and the seconds taken).
    """
    if not len(codes):
        return ([], {"generated_tokens": 0, "seconds": 0.0}) if return_stats else []
    prompts = [prompt_ids(model, text_tokenizer, c, instruction) for c in codes]
    device = model.fmri_embed.weight.device
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id(text_tokenizer), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, n - len(p) :] = torch.tensor(p, device=device)
    vec = _vector_input(model, ids, codes, vectors)
    return generate_from_ids(
        model, text_tokenizer, prompts, max_new_tokens, greedy, bf16=bf16,
        return_stats=return_stats, vectors=vec, **generate_kwargs,
    )  # fmt: skip


@torch.no_grad()
def generate_from_ids(
    model: FMRILM,
    text_tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 160,
    greedy: bool = True,
    *,
    bf16: bool = False,
    return_stats: bool = False,
    vectors: torch.Tensor | None = None,
    **generate_kwargs: Any,
):
    """Text continuations of prompts given as joint ids (text, fMRI codes, delimiters).

    Prompts are left-padded and generated together; ``vectors`` (B, L, dim) are the
    continuous-ablation inputs aligned with the left-padded ids. Returns a list of strings, or
    ``(strings, stats)`` with ``return_stats``.
    """
    if not len(prompts):
        return ([], {"generated_tokens": 0, "seconds": 0.0}) if return_stats else []
    if max_new_tokens < 1:
        raise FmrilmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    pad = pad_id(text_tokenizer)
    eos = text_tokenizer.eos_token_id
    n = max(len(p) for p in prompts)
    device = model.fmri_embed.weight.device
    ids = torch.full((len(prompts), n), pad, dtype=torch.long, device=device)
    att = torch.zeros((len(prompts), n), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, n - len(p) :] = torch.tensor(list(p), device=device)
        att[i, n - len(p) :] = 1
    was_training = model.training
    model.eval()
    base = model._base()
    options = dict(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    if greedy:  # silence "temperature is set but do_sample=False" from generation configs
        options.update(temperature=None, top_p=None, top_k=None)
    options.update(generate_kwargs)
    t0 = time.perf_counter()
    try:
        with autocast(bf16, device.type):
            embeds = model.embed(ids, vectors)
            out = base.generate(inputs_embeds=embeds, attention_mask=att, **options)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    # with inputs_embeds only, decoder-only generate returns the new tokens alone
    out = out[:, -max_new_tokens:] if out.shape[1] > max_new_tokens else out
    texts, n_generated = [], 0
    for row in out.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        n_generated += len(row)
        texts.append(text_tokenizer.decode(row, skip_special_tokens=True).strip())
    if return_stats:
        return texts, {"generated_tokens": n_generated, "seconds": seconds}
    return texts


def describe(
    model: FMRILM,
    text_tokenizer,
    codes: np.ndarray,
    max_new_tokens: int = 160,
    greedy: bool = True,
    **kwargs: Any,
) -> str:
    """A description of one window's codes (ROIs, patches); greedy decoding is deterministic."""
    return describe_batch(model, text_tokenizer, [codes], max_new_tokens, greedy, **kwargs)[0]


# ------------------------------------------------------------------------------------------
# temporal prediction


def held_out_spans(
    scan_codes: Iterable[np.ndarray],
    span_patches: int,
    limit: int | None = None,
    seed: int = 0,
    scan_vectors: Sequence[np.ndarray] | None = None,
):
    """Non-overlapping spans of ``span_patches`` steps from every window of every scan.

    ``scan_codes``: per scan an array (windows, ROIs, patches). With ``limit``, a random subset
    of that size (deterministic for ``seed``), in original order. With ``scan_vectors`` (per
    scan (windows, ROIs, patches, dim), the continuous ablation) returns ``(spans, vectors)``.
    """
    if span_patches < 2:
        raise FmrilmError(f"temporal prediction needs spans of >= 2 steps, got {span_patches}")
    spans, vecs = [], []
    for k, codes in enumerate(scan_codes):
        for j, w in enumerate(np.asarray(codes)):
            valid = complete_steps(w)
            for s in range(0, valid - span_patches + 1, span_patches):
                spans.append(w[:, s : s + span_patches])
                if scan_vectors is not None:
                    vecs.append(scan_vectors[k][j][:, s : s + span_patches])
    if limit is not None and len(spans) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(spans), size=limit, replace=False))
        spans = [spans[i] for i in keep]
        vecs = [vecs[i] for i in keep] if vecs else vecs
    return (spans, vecs) if scan_vectors is not None else spans


def code_counts(windows: Iterable[np.ndarray], n_codes: int) -> np.ndarray:
    """How often each code occurs in ``windows`` (missing patches, -1, are skipped)."""
    counts = np.zeros(n_codes, dtype=np.int64)
    for w in windows:
        w = np.asarray(w).ravel()
        counts += np.bincount(w[w >= 0], minlength=n_codes)[:n_codes]
    return counts


def _targets(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets, previous-step codes): codes of steps 2..n, ROI by ROI, step by step."""
    w = np.asarray(window)[:, : complete_steps(window)]
    return w[:, 1:].T.ravel(), w[:, :-1].T.ravel()


def _teacher_forcing_batch(model: FMRILM, chunk: Sequence[np.ndarray]):
    """Padded ids (B, L) and mask of a batch of spans, the (row, column) of every hidden state
    that predicts a code of steps 2..n, and those targets with the previous step's codes."""
    seqs = [model.vocab.span(c[:, : complete_steps(c)]) for c in chunk]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), model.vocab.end, dtype=torch.long)
    att = torch.zeros((len(seqs), length), dtype=torch.long)
    pos_rows, pos_cols, targets, previous = [], [], [], []
    for i, (c, s) in enumerate(zip(chunk, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        rois, steps = c.shape[0], complete_steps(c)
        for t in range(1, steps):  # 0-based step t >= 1: steps 2..n
            first = 1 + t * (rois + 1) + 1  # <fmri>, then per step <step> + R codes
            for r in range(rois):
                pos_rows.append(i)
                pos_cols.append(first + r - 1)  # hidden state before the target
        tgt, prev = _targets(c)
        targets.append(tgt)
        previous.append(prev)
    rows, cols = torch.tensor(pos_rows), torch.tensor(pos_cols)
    return ids, att, rows, cols, np.concatenate(targets), np.concatenate(previous)


@torch.no_grad()
def code_predictions(
    model: FMRILM,
    codes_batch: Sequence[np.ndarray],
    train_windows: Iterable[np.ndarray] | None = None,
    *,
    train_counts: np.ndarray | None = None,
    batch_size: int = 16,
    bf16: bool = False,
    vectors: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Teacher-forced next-time-step prediction on held-out spans, with two references.

    ``codes_batch``: spans (ROIs, n) with n >= 2 steps (e.g. from :func:`held_out_spans`).
    The targets are the codes of steps 2..n; each is predicted from every earlier token of the
    span (earlier steps and the earlier ROIs of its own step) through the fMRI head. On the same
    targets:

    * ``unigram``: the code frequencies of ``train_windows`` (or ``train_counts``); accuracy of
      always predicting the most frequent training code, perplexity of the add-one smoothed
      frequency distribution;
    * ``copy_previous``: each ROI's code at step t predicted as its code at step t-1
      (a point prediction: accuracy only).

    ``vectors``: per span its (ROIs, n, dim) encoder vectors, for a continuous-ablation model.
    """
    n_codes = model.vocab.n_codes
    if train_counts is None:
        if train_windows is None:
            raise FmrilmError("code_predictions needs train_windows or train_counts")
        train_counts = code_counts(train_windows, n_codes)
    train_counts = np.asarray(train_counts, dtype=np.float64)
    if train_counts.shape != (n_codes,):
        raise FmrilmError(f"train_counts must have {n_codes} entries, got {train_counts.shape}")
    keep = [i for i, c in enumerate(codes_batch) if complete_steps(c) >= 2]
    spans = [np.asarray(codes_batch[i]) for i in keep]
    span_vecs = None if vectors is None else [vectors[i] for i in keep]
    if not spans:
        raise FmrilmError("no held-out span has 2 or more complete time steps")
    log_unigram = np.log((train_counts + 1) / (train_counts.sum() + n_codes))
    top = int(np.argmax(train_counts))

    was_training = model.training
    model.eval()
    device = model.fmri_embed.weight.device
    nll, correct, n = 0.0, 0, 0
    uni_nll, uni_correct, copy_correct = 0.0, 0, 0
    try:
        for b in range(0, len(spans), batch_size):
            chunk = spans[b : b + batch_size]
            chunk_vecs = None if span_vecs is None else span_vecs[b : b + batch_size]
            ids, att, rows, cols, targets, previous = _teacher_forcing_batch(model, chunk)
            uni_nll -= float(log_unigram[targets].sum())
            uni_correct += int((targets == top).sum())
            copy_correct += int((targets == previous).sum())
            ids, att = ids.to(device), att.to(device)
            with autocast(bf16, device.type):
                vec = _vector_input(model, ids, chunk, chunk_vecs)
                h = model.hidden_states(ids, att, vec)
            logits = model.fmri_head(h[rows, cols].to(model.fmri_head.weight.dtype)).float()
            target = torch.from_numpy(targets).to(device)
            # sanity: the positions picked are exactly the code ids of steps 2..n
            if not torch.equal(ids[rows, cols + 1] - model.vocab.text_size, target):
                raise FmrilmError("internal error: span layout differs from FmriVocab.span")
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            n += int(target.numel())
    finally:
        model.train(was_training)
    return {
        "spans": len(spans),
        "targets": n,
        "model": {"accuracy": correct / n, "perplexity": math.exp(nll / n)},
        "unigram": {
            "accuracy": uni_correct / n,
            "perplexity": math.exp(uni_nll / n),
            "most_frequent_code": top,
        },
        "copy_previous": {"accuracy": copy_correct / n},
    }


# ------------------------------------------------------------------------------------------
# language retention


@torch.no_grad()
def text_perplexity(
    model_or_backbone, tokenizer, texts: Sequence[str], batch_size: int = 8, bf16: bool = False
) -> float:
    """exp(token-weighted mean next-token NLL) of ``texts``, each as ``bos text eos``.

    ``model_or_backbone``: an :class:`FMRILM` (its backbone with the LoRA adapters reads the
    text ids) or a bare Hugging Face causal LM. The first token (bos) is not scored.
    """
    if not texts:
        raise FmrilmError("text_perplexity needs at least one text")
    net = getattr(model_or_backbone, "backbone", model_or_backbone)  # FMRILM or a bare LM
    pad = pad_id(tokenizer)
    examples = [replay_example(tokenizer, t) for t in texts]
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    total, count = 0.0, 0
    try:
        for b in range(0, len(examples), batch_size):
            chunk = examples[b : b + batch_size]
            n = max(len(e.ids) for e in chunk)
            ids = torch.full((len(chunk), n), pad, dtype=torch.long)
            att = torch.zeros((len(chunk), n), dtype=torch.long)
            keep = torch.zeros((len(chunk), n), dtype=torch.bool)
            for i, e in enumerate(chunk):
                ids[i, : len(e.ids)] = torch.tensor(e.ids)
                att[i, : len(e.ids)] = 1
                keep[i, : len(e.ids)] = torch.tensor(e.loss_mask)
            ids, att, keep = ids.to(device), att.to(device), keep.to(device)
            with autocast(bf16, device.type):
                logits = net(input_ids=ids, attention_mask=att).logits
            logits, target, sel = logits[:, :-1].float(), ids[:, 1:], keep[:, 1:]
            total += float(F.cross_entropy(logits[sel], target[sel], reduction="sum"))
            count += int(sel.sum())
    finally:
        net.train(was_training)
    if count == 0:
        raise FmrilmError("the texts hold no tokens to score")
    return math.exp(total / count)
