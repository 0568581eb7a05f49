"""Training examples of stage 2 (and the prompt layout stage 3 builds on).

Three objectives, each a function that turns data into token ids plus a loss mask:

* **temporal prediction**: an fMRI span alone; the loss is on every code (next time step's
  codes given the earlier ones);
* **fMRI -> description**: a chat turn whose user message holds the span and an instruction and
  whose answer is one of the scan's descriptor texts from the corpus; the loss is on the answer;
* **text replay**: plain text from the replay set; the loss is on every token.

Ids follow :class:`fmrilm.model.vocab.FmriVocab`; the text tokenizer's chat template is used
when it has one (SmolLM2-Instruct: ChatML), else a plain ``<span>\n<instruction>\nAnswer:`` format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fmrilm.errors import FmrilmError
from fmrilm.model.vocab import FmriVocab
from fmrilm.tokenizer.codes import complete_steps

PLACEHOLDER = "\x00FMRI\x00"
DESCRIBE = "Describe this brain scan."


@dataclass
class Example:
    ids: list[int]
    loss_mask: list[bool]
    kind: str
    # continuous ablation: one vector per fMRI code token, in order of appearance
    vectors: np.ndarray | None = None


def span_vectors(codes: np.ndarray, vectors: np.ndarray | None) -> np.ndarray | None:
    """A window's (ROIs, patches, dim) vectors in the order of its span's code tokens."""
    if vectors is None:
        return None
    n = complete_steps(codes)
    return np.ascontiguousarray(vectors[:, :n].transpose(1, 0, 2).reshape(-1, vectors.shape[-1]))


def temporal_example(vocab: FmriVocab, codes: np.ndarray, vectors=None) -> Example:
    ids = vocab.span(codes)
    return Example(ids, [True] * len(ids), "temporal", span_vectors(codes, vectors))


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the pad token, else end-of-sequence."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise FmrilmError("the text tokenizer has neither a pad nor an eos token")
    return int(pad)


def prompt_pieces(tokenizer, content: str, n_spans: int) -> list[list[int]]:
    """Token ids of a user turn around its ``n_spans`` fMRI spans (generation prompt included).

    ``content`` is the user message with one :data:`PLACEHOLDER` where each span goes; the
    result has ``n_spans + 1`` pieces: text before the first span, between spans, and after
    the last (up to where the reply starts). Without a chat template the turn is
    ``content\nAnswer:``.
    """
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:
        rendered = f"{content}\nAnswer:"
    if rendered.count(PLACEHOLDER) != n_spans:
        raise FmrilmError("the chat template dropped or repeated an fMRI placeholder")
    return [text_ids(tokenizer, piece) for piece in rendered.split(PLACEHOLDER)]


def prompt_parts(tokenizer, instruction: str = DESCRIBE) -> tuple[list[int], list[int]]:
    """Token ids before and after the fMRI span of a one-scan instruction (span first)."""
    before, after = prompt_pieces(tokenizer, f"{PLACEHOLDER}\n{instruction}", 1)
    return before, after


def description_example(
    vocab: FmriVocab,
    tokenizer,
    codes: np.ndarray,
    answer: str,
    instruction: str = DESCRIBE,
    vectors: np.ndarray | None = None,
) -> Example:
    before, after = prompt_parts(tokenizer, instruction)
    span = vocab.span(codes)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    reply = text_ids(tokenizer, answer) + eos
    ids = before + span + after + reply
    mask = [False] * (len(ids) - len(reply)) + [True] * len(reply)
    return Example(ids, mask, "description", span_vectors(codes, vectors))


def replay_example(tokenizer, text: str) -> Example:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = bos + text_ids(tokenizer, text) + eos
    return Example(ids, [False] * len(bos) + [True] * (len(ids) - len(bos)), "replay")


def collate(
    examples: list[Example], pad_id: int, max_len: int | None = None, vocab: FmriVocab | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids, attention_mask, loss_mask (truncated to ``max_len``).

    Examples with vectors (the continuous ablation) also give ``vectors`` (B, L, dim), placed at
    the code positions (found with ``vocab``).
    """
    if not examples:
        raise FmrilmError("cannot build a batch from no examples")
    seqs = [(e.ids[:max_len], e.loss_mask[:max_len]) for e in examples]
    n = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    loss = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, (s, m) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        loss[i, : len(m)] = torch.tensor(m)
    batch = {"ids": ids, "attention_mask": att, "loss_mask": loss}
    with_vec = [e for e in examples if e.vectors is not None]
    if with_vec:
        if vocab is None:
            raise FmrilmError("collate needs the vocabulary to place continuous vectors")
        vec = torch.zeros((len(seqs), n, with_vec[0].vectors.shape[1]))
        is_code = (ids >= vocab.text_size) & (ids < vocab.start) & att.bool()
        for i, e in enumerate(examples):
            if e.vectors is None:
                continue
            pos = torch.nonzero(is_code[i]).squeeze(-1)
            vec[i, pos] = torch.from_numpy(e.vectors[: len(pos)])
        batch["vectors"] = vec
    return batch
