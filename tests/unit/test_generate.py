"""Using a stage-2 model (tiny backbone): descriptions, temporal prediction stats, perplexity."""

import math

import numpy as np
import pytest
import torch

from fmrilm.config import PretrainConfig, TokenizerConfig
from fmrilm.errors import FmrilmError
from fmrilm.llm.backbones import get_backbone
from fmrilm.model.fusion import build_model
from fmrilm.model.generate import (
    code_counts,
    code_predictions,
    describe,
    describe_batch,
    held_out_spans,
    text_perplexity,
)
from fmrilm.tokenizer import FMRITokenizer

TEXTS = [
    "The brain is never silent, even at rest.",
    "A language model reads text one token at a time and predicts the next token.",
    "Head motion is low.",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _backbone():
    return get_backbone("tiny")


def _wrap(backbone, tok, spec):
    torch.manual_seed(0)
    hidden = backbone.get_input_embeddings().weight.shape[1]
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=hidden)
    return build_model(
        PretrainConfig(llm="tiny"), fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec
    )


@pytest.fixture(scope="module")
def tiny():
    return _wrap(*_backbone())


def test_describe_is_a_deterministic_string_and_batches_like_single_calls(tiny):
    model, tok = tiny
    rng = np.random.default_rng(0)
    a = rng.integers(0, model.vocab.n_codes, size=(5, 3))
    b = rng.integers(0, model.vocab.n_codes, size=(5, 1))  # a shorter prompt: left padding
    model.train()
    first = describe(model, tok, a, max_new_tokens=12)
    assert model.training  # generation switches to eval and back
    assert isinstance(first, str) and first
    assert describe(model, tok, a, max_new_tokens=12) == first
    texts, stats = describe_batch(model, tok, [a, b], max_new_tokens=12, return_stats=True)
    assert texts == [first, describe(model, tok, b, max_new_tokens=12)]
    assert 0 < stats["generated_tokens"] <= 24 and stats["seconds"] > 0


def test_code_predictions_against_hand_computed_references(tiny):
    model, _ = tiny
    k = model.vocab.n_codes
    train = [np.array([[3, 3, 3], [3, 1, 2]])]  # counts: 3 x4, 1 x1, 2 x1 -> most frequent 3
    spans = [
        np.array([[3, 3], [5, 5]]),  # targets (step 2): 3, 5
        np.array([[3, 3, 3], [0, 0, 0]]),  # targets (steps 2, 3): 3, 0, 3, 0
    ]
    stats = code_predictions(model, spans, train)
    assert stats["spans"] == 2 and stats["targets"] == 6
    assert stats["copy_previous"]["accuracy"] == 1.0  # every ROI repeats its code
    assert stats["unigram"]["most_frequent_code"] == 3
    assert stats["unigram"]["accuracy"] == pytest.approx(3 / 6)
    # add-one smoothing: p(3) = 5 / (6 + K), p(0) = p(5) = 1 / (6 + K)
    nll = -(3 * math.log(5 / (6 + k)) + 3 * math.log(1 / (6 + k))) / 6
    assert stats["unigram"]["perplexity"] == pytest.approx(math.exp(nll))
    # the fMRI head starts at zero: a uniform guess (perplexity K), argmax = code 0
    assert stats["model"]["perplexity"] == pytest.approx(k, rel=1e-5)
    assert stats["model"]["accuracy"] == pytest.approx(2 / 6)
    # counts can be passed directly; a changing ROI lowers copy accuracy
    moved = [np.array([[1, 2, 2], [4, 4, 5]])]  # targets 2, 4 | 2, 5 ; previous 1, 4 | 2, 4
    stats = code_predictions(model, moved, train_counts=code_counts(train, k), batch_size=1)
    assert stats["targets"] == 4 and stats["copy_previous"]["accuracy"] == pytest.approx(2 / 4)
    assert stats["unigram"]["accuracy"] == 0.0
    with pytest.raises(FmrilmError, match="train_windows or train_counts"):
        code_predictions(model, spans)
    with pytest.raises(FmrilmError, match="2 or more"):
        code_predictions(model, [np.array([[1], [2]])], train)


def test_held_out_spans_are_non_overlapping_and_skip_missing_steps():
    scan = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    scan[1, :, 3:] = -1  # the second window has 3 complete steps
    spans = held_out_spans([scan], span_patches=2)
    # window 0: steps 0-1, 2-3; window 1: steps 0-1 only
    assert [s.shape for s in spans] == [(3, 2)] * 3
    assert np.array_equal(spans[1], scan[0, :, 2:4]) and np.array_equal(spans[2], scan[1, :, :2])
    assert len(held_out_spans([scan], 2, limit=2)) == 2
    with pytest.raises(FmrilmError, match=">= 2 steps"):
        held_out_spans([scan], 1)


def test_text_perplexity_equal_before_and_after_zero_lora_and_uses_adapters():
    backbone, tok, spec = _backbone()
    before = text_perplexity(backbone, tok, TEXTS, batch_size=2)
    assert math.isfinite(before) and before > 1
    model, tok = _wrap(backbone, tok, spec)  # peft's LoRA B starts at 0: same function
    after = text_perplexity(model, tok, TEXTS)
    assert after == pytest.approx(before, rel=1e-6)
    codes = np.arange(10).reshape(5, 2)
    said = describe(model, tok, codes, max_new_tokens=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    # both perplexity and generation go through the adapters
    assert text_perplexity(model, tok, TEXTS) != pytest.approx(before, rel=1e-3)
    assert describe(model, tok, codes, max_new_tokens=8) != said
    with pytest.raises(FmrilmError, match="at least one"):
        text_perplexity(model, tok, [])


def test_continuous_ablation_reads_vectors():
    backbone, tok, spec = _backbone()
    torch.manual_seed(0)
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=64)
    cfg = PretrainConfig(llm="tiny", fmri_input="continuous")
    model, tok = build_model(cfg, fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec)
    rng = np.random.default_rng(0)
    dim = fmri_tok.config.code_dim
    codes = rng.integers(0, 16, size=(2, 3, 4))  # one scan: 2 windows, 3 ROIs, 4 steps
    vectors = rng.normal(size=(2, 3, 4, dim)).astype(np.float32)
    spans, vecs = held_out_spans([codes], 2, scan_vectors=[vectors])
    assert len(spans) == len(vecs) == 4 and vecs[1].shape == (3, 2, dim)
    assert np.array_equal(vecs[1], vectors[0, :, 2:4])
    stats = code_predictions(model, spans, spans, vectors=vecs, batch_size=3)
    assert stats["targets"] == 4 * 3 and stats["model"]["perplexity"] == pytest.approx(16, 1e-5)
    text = describe(model, tok, spans[0], max_new_tokens=6, vectors=[vecs[0]])
    assert isinstance(text, str)
    with pytest.raises(FmrilmError, match="continuous fMRI vectors"):
        describe(model, tok, spans[0], max_new_tokens=6)
