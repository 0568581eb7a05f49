"""The early-fusion model: id layout, embedding routing, separate heads, gradients."""

import numpy as np
import pytest
import torch

from fmrilm.errors import FmrilmError
from fmrilm.llm.backbones import tiny_llama
from fmrilm.model.fusion import FMRILM
from fmrilm.model.vocab import FmriVocab


def test_vocab_layout_and_span():
    v = FmriVocab(text_size=256, n_codes=16)
    assert (v.start, v.end, v.step, v.size) == (272, 273, 274, 275)
    codes = np.array([[1, 2, 3], [4, 5, -1]])  # 2 ROIs x 3 patches, the last patch missing
    span = v.span(codes)
    # <fmri> <step> c(0,0) c(1,0) <step> c(0,1) c(1,1) </fmri>: the incomplete step is dropped
    assert span == [272, 274, 257, 260, 274, 258, 261, 273]
    with pytest.raises(FmrilmError, match="must lie in"):
        v.codes_to_ids(np.array([16]))
    with pytest.raises(FmrilmError, match="shape"):
        v.span(np.zeros(3, dtype=int))


def _model(n_codes=16, seed=0):
    backbone = tiny_llama(vocab_size=256, seed=seed)
    vocab = FmriVocab(text_size=256, n_codes=n_codes)
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(n_codes, 64, generator=g)
    return FMRILM(backbone, vocab, codes), vocab, codes


def test_new_rows_start_from_the_projected_codebook_and_route_by_id():
    model, vocab, codes = _model()
    ids = torch.tensor([[5, vocab.text_size + 3, vocab.step]])
    e = model.embed(ids)[0]
    words = model.backbone.get_input_embeddings().weight
    assert torch.equal(e[0], words[5])
    assert torch.allclose(e[1], codes[3])
    assert torch.allclose(e[2], words.mean(0), atol=1e-6)
    assert not model.fmri_head.weight.any()  # uniform first guess over the codes


def test_losses_split_by_target_kind_and_train_the_new_rows():
    model, vocab, _ = _model()
    span = vocab.span(np.random.default_rng(0).integers(0, 16, size=(4, 3)))
    ids = torch.tensor([span + [10, 11, 12, 13]])
    out = model(ids)
    # targets: 12 codes inside the span (delimiters do not count), 4 text tokens after it
    assert int(out["fmri_tokens"]) == 12 and int(out["text_tokens"]) == 4
    assert torch.isfinite(out["fmri_loss"]) and torch.isfinite(out["text_loss"])
    (out["fmri_loss"] + out["text_loss"]).backward()
    assert model.fmri_embed.weight.grad.abs().sum() > 0
    assert model.fmri_head.weight.grad.abs().sum() > 0
    # a loss mask restricts the targets (e.g. only the description)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(span) :] = True
    out = model(ids, loss_mask=mask)
    assert "fmri_loss" not in out and int(out["text_tokens"]) == 4


def test_code_embeddings_of_another_llm_are_refused():
    backbone = tiny_llama(vocab_size=256)
    vocab = FmriVocab(text_size=256, n_codes=16)
    with pytest.raises(FmrilmError, match="aligned to another LLM"):
        FMRILM(backbone, vocab, torch.zeros(16, 32))
    with pytest.raises(FmrilmError, match="word embeddings but the text tokenizer"):
        FMRILM(backbone, FmriVocab(text_size=300, n_codes=16))
