"""Questions about scans: prompts with fMRI spans, constrained answers, free answers (stage 3).

A prompt is a user turn given as *segments* -- ``("text", str)`` pieces and ``("scan", id)``
placeholders where an fMRI span goes (few-shot exemplar scans first, the query scan last; see
:mod:`fmrilm.tasks.prompts`), concatenated verbatim (text pieces carry their own newlines)
and rendered with the backbone's chat template (:func:`fmrilm.model.objectives.prompt_pieces`).
``[("scan", id), ("text", "\nDescribe this brain scan.")]`` is exactly stage 2's prompt.

* :func:`render` turns segments (+ an optional answer) into joint ids and a loss mask: the
  training example of instruction tuning, or the prompt of a question.
* :func:`candidate_logprobs` scores a closed set of answers: the log-likelihood of each
  candidate's tokens followed by end-of-turn, given the prompt. The prompt runs once; its
  key/value cache is repeated for all candidates, which are scored in one batched forward.
  ``softmax`` of the scores gives the model's distribution over the valid answers.
* :func:`prompt_state` is the backbone's last-layer hidden state where the answer would start:
  the vector a linear probe reads (``fmrilm eval --mode state-probe``).
* :func:`answer_free` generates answers (greedy) for a batch of prompts; parsing them is the
  task's job, and an unparseable answer stays unparseable (never mapped to a class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fmrilm.errors import FmrilmError
from fmrilm.model.generate import generate_from_ids
from fmrilm.model.objectives import PLACEHOLDER, Example, pad_id, prompt_pieces, text_ids
from fmrilm.runtime import autocast

if TYPE_CHECKING:
    from fmrilm.model.fusion import FMRILM

Segments = Sequence[tuple[str, str]]
SpanOf = Callable[[str], np.ndarray]  # scan id -> codes (ROIs, steps)


def render(
    model: FMRILM,
    tokenizer,
    segments: Segments,
    span_of: SpanOf,
    answer: str | None = None,
    kind: str = "instruct",
) -> Example:
    """Joint ids of a user turn (and the reply ``answer``, which alone carries the loss)."""
    texts, scans = [], []
    for i, seg in enumerate(segments):
        if not (isinstance(seg, (tuple, list)) and len(seg) == 2 and seg[0] in ("text", "scan")):
            raise FmrilmError(
                f"segment {i} must be ('text', str) or ('scan', scan_id), got {seg!r}"
            )
        if seg[0] == "scan":
            scans.append(seg[1])
            texts.append(PLACEHOLDER)
        else:
            if PLACEHOLDER in seg[1]:
                raise FmrilmError(f"segment {i}: text contains the reserved fMRI placeholder")
            texts.append(seg[1])
    if not scans:
        raise FmrilmError("a question needs at least one ('scan', id) segment")
    pieces = prompt_pieces(tokenizer, "".join(texts), len(scans))
    ids = list(pieces[0])
    for scan_id, piece in zip(scans, pieces[1:], strict=True):
        ids += model.vocab.span(span_of(scan_id)) + piece
    mask = [False] * len(ids)
    if answer is not None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        reply = text_ids(tokenizer, answer) + eos
        ids += reply
        mask += [True] * len(reply)
    return Example(ids, mask, kind)


@torch.no_grad()
def candidate_logprobs(
    model: FMRILM,
    tokenizer,
    prompt: Sequence[int],
    candidates: Sequence[str],
    *,
    bf16: bool = False,
    batch_size: int = 64,
    end: Sequence[int] | None = None,
) -> np.ndarray:
    """log p(candidate + end of turn | prompt) for each candidate, shape (n_candidates,).

    Sums over the candidate's tokens (not length-normalised: a candidate that needs more
    tokens must earn each). The end-of-turn token makes "5" and "53" distinct answers;
    ``end`` replaces it (e.g. the newline after an answer that is not the last of a
    multi-question reply).
    """
    if not candidates:
        raise FmrilmError("constrained scoring needs at least one candidate answer")
    eos = tokenizer.eos_token_id
    end = list(end) if end is not None else ([eos] if eos is not None else [])
    seqs = [text_ids(tokenizer, str(c)) + end for c in candidates]
    if any(len(s) == 0 for s in seqs):
        raise FmrilmError("a candidate answer has no tokens")
    device = model.fmri_embed.weight.device
    was_training = model.training
    model.eval()
    base = model._base()
    ids = torch.tensor([list(prompt)], device=device)
    scores = np.zeros(len(seqs))
    try:
        with autocast(bf16, device.type):
            out = base(inputs_embeds=model.embed(ids), use_cache=True)
        first = F.log_softmax(out.logits[0, -1].float(), dim=-1)
        for i, s in enumerate(seqs):
            scores[i] = float(first[s[0]])
        rest = [i for i, s in enumerate(seqs) if len(s) > 1]
        pad = pad_id(tokenizer)
        for b in range(0, len(rest), batch_size):
            chunk = rest[b : b + batch_size]
            n = max(len(seqs[i]) for i in chunk) - 1
            x = torch.full((len(chunk), n), pad, dtype=torch.long, device=device)
            valid = torch.zeros((len(chunk), n), dtype=torch.long, device=device)
            for j, i in enumerate(chunk):
                x[j, : len(seqs[i]) - 1] = torch.tensor(seqs[i][:-1], device=device)
                valid[j, : len(seqs[i]) - 1] = 1
            cache = _repeat_cache(_cache_of(out), len(chunk))
            att = torch.cat(
                [torch.ones((len(chunk), ids.shape[1]), dtype=torch.long, device=device), valid],
                dim=1,
            )
            with autocast(bf16, device.type):
                logits = base(
                    input_ids=x, attention_mask=att, use_cache=True, **_cache_kwarg(base, cache)
                ).logits
            logp = F.log_softmax(logits.float(), dim=-1)
            for j, i in enumerate(chunk):
                target = torch.tensor(seqs[i][1:], device=device)
                scores[i] += float(logp[j, : len(target)].gather(1, target[:, None]).sum())
    finally:
        model.train(was_training)
    return scores


@torch.no_grad()
def prompt_state(model: FMRILM, prompt: Sequence[int], *, bf16: bool = False) -> np.ndarray:
    """The backbone's last-layer hidden state at the prompt's final position, float32 (hidden,).

    That position is where the answer's first token is predicted, so the state holds what the
    model has read of the scan (and of any descriptor line) in the light of the question.
    """
    if not len(prompt):
        raise FmrilmError("prompt_state needs a non-empty prompt")
    device = model.fmri_embed.weight.device
    was_training = model.training
    model.eval()
    try:
        ids = torch.tensor([list(prompt)], device=device)
        with autocast(bf16, device.type):
            out = model._base()(inputs_embeds=model.embed(ids), output_hidden_states=True)
        return out.hidden_states[-1][0, -1].float().cpu().numpy()
    finally:
        model.train(was_training)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _cache_kwarg(base, cache) -> dict[str, Any]:
    """transformers >= 5.x names the key/value cache argument ``cache``; older ones did not."""
    import inspect

    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    return {name: cache}


def _repeat_cache(cache, n: int):
    """A copy of a batch-1 key/value cache repeated ``n`` times (the original is untouched)."""
    import copy

    out = copy.deepcopy(cache)
    if n > 1:
        out.batch_repeat_interleave(n)
    return out


def answer_free(
    model: FMRILM,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 24,
    bf16: bool = False,
    **kwargs: Any,
) -> list[str]:
    """Greedy free-text answers to prompts (joint ids from :func:`render`)."""
    return generate_from_ids(model, tokenizer, prompts, max_new_tokens, True, bf16=bf16, **kwargs)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities over candidates from their log-likelihoods."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def expected_answer(probs: dict[str, float]) -> float:
    """A regression task's answer: the probability-weighted mean of its numeric candidates."""
    return sum(float(c) * p for c, p in probs.items())


def format_choice(
    probs: dict[str, float], kind: str = "classification", decimals: int = 0, unit: str = "",
    top: int = 8,
) -> str:  # fmt: skip
    """``A: ...`` for a closed question, then the ``top`` candidates with their probabilities.

    ``probs`` as :meth:`FMRILM.choose` returns them (most likely first). A regression task
    answers :func:`expected_answer` (as ``fmrilm eval`` scores it) next to the mode.
    """
    best = next(iter(probs))
    if kind == "regression":
        answer = f"A: {expected_answer(probs):.{decimals}f} {unit}".rstrip() + f"  (mode {best})"
    else:
        answer = f"A: {best}  (p = {probs[best]:.2f})"
    return "\n".join([answer, *(f"   {p:6.3f}  {c}" for c, p in list(probs.items())[:top])])
