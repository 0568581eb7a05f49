"""Questions about scans (tiny backbone): multi-span prompts, constrained and free answers."""

import numpy as np
import pytest
import torch

from fmrilm.config import PretrainConfig, TokenizerConfig
from fmrilm.errors import FmrilmError
from fmrilm.llm.backbones import get_backbone
from fmrilm.model.fusion import build_model
from fmrilm.model.objectives import Example, collate
from fmrilm.model.qa import answer_free, candidate_logprobs, render, softmax
from fmrilm.tokenizer import FMRITokenizer


@pytest.fixture(scope="module")
def model_and_tok():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    backbone, tok, spec = get_backbone("tiny")
    torch.manual_seed(0)
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=backbone.config.hidden_size)
    model, tok = build_model(
        PretrainConfig(llm="tiny"), fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec
    )
    # non-zero LoRA B and fMRI head, so the adapters take part in every number below
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "fmri_head" in name:
                p.normal_(0, 0.05)
    model.eval()
    yield model, tok
    torch.set_num_threads(n)


SPANS = {"a": np.arange(6).reshape(3, 2) % 16, "b": (np.arange(6).reshape(3, 2) + 5) % 16}


def test_render_places_every_span_and_masks_only_the_answer(model_and_tok):
    model, tok = model_and_tok
    segments = [("scan", "a"), ("text", "Answer: yes\n"), ("scan", "b"), ("text", "\nSame?")]
    ex = render(model, tok, segments, SPANS.__getitem__, answer="no")
    assert ex.ids.count(model.vocab.start) == 2 and ex.ids.count(model.vocab.end) == 2
    first = ex.ids.index(model.vocab.start)
    assert ex.ids[first : first + len(model.vocab.span(SPANS["a"]))] == model.vocab.span(SPANS["a"])
    answer = [i for i, m in zip(ex.ids, ex.loss_mask, strict=True) if m]
    assert answer == tok("no", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # the one-scan layout is stage 2's description prompt, token for token
    from fmrilm.model.generate import prompt_ids
    from fmrilm.model.objectives import DESCRIBE

    stage2 = prompt_ids(model, tok, SPANS["a"], DESCRIBE)
    assert (
        render(model, tok, [("scan", "a"), ("text", "\n" + DESCRIBE)], SPANS.__getitem__).ids
        == stage2
    )
    with pytest.raises(FmrilmError, match="at least one"):
        render(model, tok, [("text", "no scan")], SPANS.__getitem__)
    with pytest.raises(FmrilmError, match="segment 0"):
        render(model, tok, [("image", "a")], SPANS.__getitem__)


def test_candidate_scores_equal_the_full_forward_log_likelihood(model_and_tok):
    model, tok = model_and_tok
    segments = [("text", "Context line.\n"), ("scan", "a"), ("text", "\nWhich one?")]
    prompt = render(model, tok, segments, SPANS.__getitem__).ids
    candidates = ["female", "male", "working memory", "53"]
    fast = candidate_logprobs(model, tok, prompt, candidates, batch_size=3)
    for cand, score in zip(candidates, fast, strict=True):
        ex = render(model, tok, segments, SPANS.__getitem__, answer=cand)
        b = collate([ex], tok.pad_token_id)
        with torch.no_grad():
            out = model(b["ids"], b["attention_mask"], b["loss_mask"])
        assert score == pytest.approx(-float(out["text_loss_sum"]), abs=1e-3)
    # another end than end-of-turn (a newline between answers of a multi-question reply)
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    with_nl = candidate_logprobs(model, tok, prompt, candidates[:2], end=nl)
    for cand, score in zip(candidates[:2], with_nl, strict=True):
        ids = prompt + tok(cand, add_special_tokens=False)["input_ids"] + nl
        n_target = len(ids) - len(prompt)
        b = collate(
            [Example(ids, [False] * len(prompt) + [True] * n_target, "x")], tok.pad_token_id
        )
        with torch.no_grad():
            out = model(b["ids"], b["attention_mask"], b["loss_mask"])
        assert score == pytest.approx(-float(out["text_loss_sum"]), abs=1e-3)
    p = softmax(fast)
    assert p.sum() == pytest.approx(1.0) and np.argmax(p) == np.argmax(fast)
    with pytest.raises(FmrilmError, match="at least one candidate"):
        candidate_logprobs(model, tok, prompt, [])


def test_free_answers_are_text_and_deterministic(model_and_tok):
    model, tok = model_and_tok
    prompts = [
        render(model, tok, [("scan", k), ("text", "\nDescribe.")], SPANS.__getitem__).ids
        for k in ("a", "b")
    ]
    out = answer_free(model, tok, prompts, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert out == answer_free(model, tok, prompts, max_new_tokens=4)


def test_prompt_state_is_where_the_first_answer_token_is_predicted(model_and_tok):
    from fmrilm.model.qa import prompt_state

    model, tok = model_and_tok
    prompt = render(model, tok, [("scan", "a"), ("text", "\nSex?")], SPANS.__getitem__).ids
    state = prompt_state(model, prompt)
    assert state.shape == (model._base().config.hidden_size,) and state.dtype == np.float32
    # the backbone's output head on that state gives the first answer token's log-probability
    head = model._base().get_output_embeddings()
    logp = torch.log_softmax(head(torch.from_numpy(state)[None]).float(), -1)[0]
    single = [c for c in ("a", "b", "c") if len(tok(c, add_special_tokens=False)["input_ids"]) == 1]
    first = {c: tok(c, add_special_tokens=False)["input_ids"][0] for c in single}
    scores = candidate_logprobs(model, tok, prompt, single, end=[])
    np.testing.assert_allclose([float(logp[first[c]]) for c in single], scores, atol=1e-4)
    assert not np.allclose(state, prompt_state(model, prompt[:-1]))
    with pytest.raises(FmrilmError, match="non-empty"):
        prompt_state(model, [])
