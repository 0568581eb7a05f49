"""The paraphrase check rejects every dropped or flipped fact; the LLM plumbing works offline."""

from __future__ import annotations

import json
import string
import time

import pytest

from fmrilm.corpus.paraphrase import (
    Paraphraser,
    check_paraphrase,
    paraphrase_description,
    qualifiers,
    split_sentences,
)
from fmrilm.corpus.text import describe, verify
from fmrilm.errors import FmrilmError

FC = "Within-network connectivity of the DorsalAttention network is markedly reduced (0.31, z = -2.3)."
HUBS = "The strongest hubs are Precuneus_L, Angular_R, Calcarine_L."
PROFILE = "Internal coupling per network: Default typical, Visual increased."


def _reasons(original: str, candidate: str) -> set[str]:
    return {p.split(":")[0] for p in check_paraphrase(original, candidate)}


def test_a_faithful_rewrite_is_accepted():
    good = "The DorsalAttention network shows markedly diminished internal connectivity (0.31, z = -2.3)."
    assert check_paraphrase(FC, good) == []
    assert (
        check_paraphrase(HUBS, "Precuneus_L, Angular_R, Calcarine_L are the strongest hubs.") == []
    )
    assert (
        check_paraphrase(
            PROFILE, "Per network, internal coupling: Default normal, Visual elevated."
        )
        == []
    )


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (
            "The DorsalAttention network is markedly reduced in coupling (z = -2.3).",
            "dropped number",
        ),
        (
            "The DorsalAttention network is markedly reduced in coupling (0.13, z = -2.3).",
            "dropped number",
        ),
        (
            "The DorsalAttention network is markedly increased in coupling (0.31, z = -2.3).",
            "changed qualifier",
        ),
        (
            "The DorsalAttention network is slightly reduced in coupling (0.31, z = -2.3).",
            "changed qualifier",
        ),
        (
            "The DorsalAttention network is typical in coupling (0.31, z = -2.3).",
            "changed qualifier",
        ),
        ("This network is markedly reduced in internal coupling (0.31, z = -2.3).", "dropped name"),
        (
            "The DorsalAttention network is markedly reduced in coupling (0.31, z = -2.3, 12 regions).",
            "added number",
        ),
        (
            "The DorsalAttention network is markedly reduced in coupling (0.31, z = -2.3) in women.",
            "label word",
        ),
        (
            "The DorsalAttention network is not markedly reduced in coupling (0.31, z = -2.3).",
            "negation",
        ),
        (
            "The DorsalAttention network is markedly reduced in coupling (z = 0.31, -2.3).",
            "relabelled number",
        ),
        (
            "The DorsalAttention network is markedly reduced in coupling by 0.31 (z = -2.3).",
            "number as a change",
        ),
        ("", "empty"),
        (FC * 4, "too long"),
        (FC, "unchanged"),
    ],
)
def test_each_unfaithful_rewrite_is_rejected_for_its_reason(candidate, reason):
    assert reason in _reasons(FC, candidate)


def test_swapped_names_and_measures_are_rejected():
    assert "swapped qualifier" in _reasons(
        PROFILE, "Per network: Default increased, Visual typical."
    )
    resp = "Event-locked responses are strongest in the Default (t = 2.1) and Visual (t = 1.4) networks."
    swapped = (
        "The strongest responses occur in the Default (t = 1.4) and Visual (t = 2.1) networks."
    )
    assert "swapped number" in _reasons(resp, swapped)
    grad = "The principal connectivity gradient runs from the Default network to the Visual network (range 1.20)."
    assert "reordered names" in _reasons(
        grad, "The principal gradient (range 1.20) spans the Visual network to the Default network."
    )
    mod = "Modularity is typical (0.41, z = +0.2) with 4 modules."
    assert "dropped measure" in _reasons(
        mod, "Efficiency is typical (0.41, z = +0.2) with 4 parts."
    )


def test_qualifier_synonyms_map_onto_the_scale():
    assert qualifiers("coupling is strongly elevated") == ["markedly increased"]
    assert qualifiers("a slight decrease in power") == ["slightly reduced"]
    assert qualifiers("values look unremarkable") == ["typical"]
    assert qualifiers("average dwell 12 s, on average, is average.") == ["typical"]
    assert qualifiers("moderately increased") == ["moderately increased"]  # matches no level


def _record():
    def d(value, z=None):
        return {"value": value, "z": z, "unit": "", "family": "", "provenance": ""}

    return {
        "fc.mean": d(0.31, 0.2),
        "fc.within.Default": d(0.52, -2.4),
        "fc.within.Visual": d(0.61, 1.3),
        "fc.between.Default__Visual": d(0.12, -0.7),
        "graph.global_efficiency": d(0.41, 0.6),
        "graph.modularity": d(0.38, -1.1),
        "graph.n_modules": d(4),
        "quality.fd_mean": d(0.14, 0.1),
    }


def test_paraphrase_description_keeps_only_accepted_rewrites():
    record = _record()
    text = describe(record, "sub-01", 0)
    sentences = split_sentences(text)
    assert len(sentences) >= 5

    def fake(batch):
        # sentence 0: a faithful rewrite; sentence 1: drops its numbers; the rest: a flipped word
        out = []
        for i, s in enumerate(batch):
            if i == 0:
                out.append("In short, " + s[0].lower() + s[1:])
            elif i == 1:
                out.append(s.split("(")[0].strip() + ".")
            else:
                out.append(s.replace("reduced", "increased").replace("typical", "markedly reduced"))
        return out

    new, stats = paraphrase_description(text, fake)
    assert stats["sentences"] == len(sentences)
    assert stats["accepted"] + stats["rejected"] == stats["sentences"]
    assert stats["accepted"] == 1 and [r["index"] for r in stats["replaced"]] == [0]
    assert stats["reasons"]["dropped number"] == 1
    assert sum(stats["reasons"].values()) >= stats["rejected"]
    kept = split_sentences(new)
    assert kept[0].startswith("In short, ") and kept[1:] == sentences[1:]
    # the kept template sentences still verify against the record
    checked, problems = verify(" ".join(kept[1:]), record)
    assert checked == len(sentences) - 1 and problems == []


def test_split_sentences_keeps_decimal_numbers_whole():
    text = "Modularity is typical (0.41, z = +0.2) with 4 modules. Hubs are A_L, B_R."
    assert split_sentences(text) == [
        "Modularity is typical (0.41, z = +0.2) with 4 modules.",
        "Hubs are A_L, B_R.",
    ]


# ------------------------------------------------------------------------------------------
# backbones (no real LLM)


def _char_tokenizer():
    """A character-level fast tokenizer with a ChatML-like template, built in memory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def test_tiny_llama_generates_and_paraphraser_batches():
    torch = pytest.importorskip("torch")
    from fmrilm.llm import tiny_llama

    tok = _char_tokenizer()
    model = tiny_llama(vocab_size=len(tok))
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    ids = torch.tensor([tok("abc")["input_ids"]])
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, 8)
    p = Paraphraser(model, tok, batch_size=2, autocast=False, few_shot=())
    sentences = ["Short one.", "A rather longer sentence (0.31, z = -1.3).", "Third."]
    texts = p(sentences)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert p.generated_tokens > 0
    # greedy decoding is deterministic
    assert p(sentences) == texts


def test_load_backbone_rejects_missing_and_non_causal_folders(tmp_path):
    pytest.importorskip("transformers")
    from fmrilm.llm import load_backbone

    with pytest.raises(FmrilmError, match="does not exist"):
        load_backbone(str(tmp_path / "nope"))
    with pytest.raises(FmrilmError, match="no config.json"):
        load_backbone(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "vit", "hidden_size": 32, "num_attention_heads": 2})
    )
    with pytest.raises(FmrilmError, match="not a causal language model"):
        load_backbone(tmp_path)


def test_load_backbone_refuses_a_hub_id_without_local_weights(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    from fmrilm.llm import load_backbone

    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty local hub cache
    with pytest.raises(FmrilmError, match="weights must be local"):
        load_backbone("someone/not-a-cached-model")


# ------------------------------------------------------------------------------------------
# the real default LLM


@pytest.mark.slow
def test_smollm2_paraphrases_real_sentences(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from fmrilm.llm import load_backbone

    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))
    try:
        load_backbone()  # converts the GGUF into the (empty) cache
    except FmrilmError as exc:
        pytest.skip(str(exc))
    t0 = time.perf_counter()
    model, tok = load_backbone()
    assert time.perf_counter() - t0 < 2.0
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").is_file()

    text = " ".join(split_sentences(describe(_record(), "sub-01", 1))[:3])
    new, stats = paraphrase_description(text, Paraphraser(model, tok))
    assert isinstance(new, str)
    assert stats["sentences"] == 3 and stats["accepted"] + stats["rejected"] == 3
    print(f"acceptance {stats['accepted']}/{stats['sentences']}: {stats['reasons']}")


@pytest.mark.parametrize(
    ("original", "candidate"),
    [
        # seen from SmolLM2: a level turned into a change, and the measure dropped
        (
            "Across all region pairs, connectivity is reduced (mean Fisher z 0.20, z = -1.1).",
            "Across all region pairs, connectivity is reduced by a mean Fisher z = 0.20, z = -1.1.",
        ),
        (
            "The Limbic network is increased in internal coupling (0.10, z = +1.1).",
            "The Limbic network increases by: 0.10, z = +1.1.",
        ),
    ],
)
def test_real_model_failures_are_rejected(original, candidate):
    assert check_paraphrase(original, candidate)
