"""Backbone registry: tiny backbone, LoRA targets by model type, peft wrapping, refusals.

Everything here is built from configs in temporary folders: no download, no real LLM.
"""

from __future__ import annotations

import time

import pytest

from fmrilm.errors import FmrilmError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmrilm.llm import backbones  # noqa: E402
from fmrilm.llm.backbones import (  # noqa: E402
    LORA_TARGETS,
    PLAIN_CHAT_TEMPLATE,
    BackboneSpec,
    get_backbone,
    known_backbones,
    load_backbone,
    resolve_backbone,
    tiny_tokenizer,
)

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Describe the scan."},
]


# ------------------------------------------------------------------------------------------
# helpers: tiny models of several families, saved as safetensors folders


def _config(model_type: str, vocab_size: int):
    small = {"vocab_size": vocab_size}
    if model_type == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, **small)
    if model_type == "bloom":
        return transformers.BloomConfig(n_layer=2, hidden_size=32, n_head=2, **small)
    if model_type == "bert":
        return transformers.BertConfig(
            num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, **small,
        )  # fmt: skip
    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[model_type]
    return cls(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, **small,
    )  # fmt: skip


def _save(folder, model_type: str, *, head: str = "causal", chat_template: bool = True):
    """A tiny model of ``model_type`` plus the tiny tokenizer, saved under ``folder``."""
    tok = tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
    config = _config(model_type, len(tok))
    auto = {
        "causal": transformers.AutoModelForCausalLM,
        "masked": transformers.AutoModelForMaskedLM,
        "base": transformers.AutoModel,
    }[head]
    torch.manual_seed(0)
    model = auto.from_config(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _prompt_ids(tok, spec):
    return tok(spec.format_chat(tok, MESSAGES), return_tensors="pt")


# ------------------------------------------------------------------------------------------
# the tiny backbone


def test_tiny_tokenizer_is_a_real_deterministic_bpe():
    backbones._tiny_tokenizer_json.cache_clear()
    t0 = time.perf_counter()
    tok = tiny_tokenizer()
    assert time.perf_counter() - t0 < 1.0
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert 300 <= len(tok) <= 500
    backbones._tiny_tokenizer_json.cache_clear()
    assert tiny_tokenizer().get_vocab() == tok.get_vocab()  # retrained: same vocabulary

    # byte-level: any text round-trips, common words are merged into few tokens
    text = "The left hippocampus (r = 0.62), µ-scale ünïcode!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(tok("the brain network")["input_ids"]) < len("the brain network")
    for special in ("<|im_start|>", "<|im_end|>", "<pad>", "<|endoftext|>"):
        assert len(tok(special)["input_ids"]) == 1
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|im_end|>", "<pad>")
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3


def test_tiny_backbone_forward_and_generate_with_chat_template():
    model, tok, spec = get_backbone("tiny")
    assert isinstance(spec, BackboneSpec) and spec.name == "tiny"
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert spec.lora_targets == LLAMA_TARGETS and spec.model_type == "llama"
    assert spec.has_chat_template is True
    assert spec.hidden_size == model.config.hidden_size == 64
    assert spec.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]

    prompt = spec.format_chat(tok, MESSAGES)
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    enc = _prompt_ids(tok, spec)
    n = enc["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, n, spec.vocab_size) and torch.isfinite(logits).all()

    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert n < out.shape[1] <= n + 4
    assert isinstance(tok.decode(out[0, n:], skip_special_tokens=True), str)
    # deterministic: same weights and same greedy continuation on a second build
    model2, _, _ = get_backbone("tiny")
    out2 = model2.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, out2)


def test_registry_names_and_legacy_load_backbone():
    assert known_backbones()[0] == backbones.DEFAULT_BACKBONE and "tiny" in known_backbones()
    model, tok = load_backbone("tiny")  # existing callers get a pair
    assert model.config.vocab_size == len(tok)
    model, _, spec = get_backbone("TINY", dtype=torch.bfloat16)  # case-insensitive names
    assert spec.name == "tiny" and next(model.parameters()).dtype == torch.bfloat16


def test_default_spec_resolves_without_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("FMRILM_CACHE", str(tmp_path))  # nothing converted yet
    spec = resolve_backbone()
    assert spec.name == "smollm2-135m-instruct" and spec.lora_targets == LLAMA_TARGETS
    assert not any(tmp_path.iterdir())  # resolving converted nothing
    with pytest.raises(FmrilmError, match="once it is loaded"):
        spec.hidden_size  # noqa: B018


# ------------------------------------------------------------------------------------------
# local folders: LoRA targets from config.model_type


@pytest.mark.parametrize(
    ("model_type", "targets"),
    [
        ("llama", LLAMA_TARGETS),
        ("qwen2", LLAMA_TARGETS),
        ("qwen3", LLAMA_TARGETS),
        ("gpt2", ("c_attn", "c_proj", "c_fc")),
    ],
)
def test_folder_backbones_infer_lora_targets(tmp_path, model_type, targets):
    folder = _save(tmp_path / model_type, model_type)
    model, tok, spec = get_backbone(folder)
    assert spec.model_type == model_type and spec.lora_targets == targets
    assert LORA_TARGETS[model_type] == targets
    assert spec.name == str(folder) and spec.hidden_size == 32 and spec.vocab_size == len(tok)
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    enc = _prompt_ids(tok, spec)
    with torch.no_grad():
        assert model(**enc).logits.shape[-1] == spec.vocab_size


def test_base_model_without_chat_template_gets_the_plain_format(tmp_path):
    folder = _save(tmp_path / "gpt2", "gpt2", chat_template=False)
    model, tok, spec = get_backbone(str(folder))
    assert spec.has_chat_template is False
    assert tok.chat_template == PLAIN_CHAT_TEMPLATE  # installed, so apply_chat_template works
    history = [
        *MESSAGES,
        {"role": "assistant", "content": "Calm."},
        {"role": "user", "content": "?"},
    ]
    text = spec.format_chat(tok, history)
    assert text == (
        "Answer briefly.\n\nUser: Describe the scan.\nAssistant: Calm.<|im_end|>\nUser: ?\nAssistant:"
    )
    assert tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True) == text
    enc = tok(text, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_unknown_model_type_needs_explicit_lora_targets(tmp_path):
    assert "bloom" not in LORA_TARGETS
    folder = _save(tmp_path / "bloom", "bloom")
    with pytest.raises(FmrilmError, match="no LoRA targets known for model type 'bloom'") as e:
        get_backbone(folder)
    assert "query_key_value" in str(e.value) and "lora_targets=" in str(e.value)
    assert "\n" not in str(e.value)
    # explicit targets work; so does load_backbone, which never fine-tunes
    _, _, spec = get_backbone(folder, lora_targets=["query_key_value", "dense"])
    assert spec.lora_targets == ("query_key_value", "dense")
    assert load_backbone(folder)[0].config.model_type == "bloom"
    with pytest.raises(FmrilmError, match="not modules of this model"):
        get_backbone(folder, lora_targets=["q_proj"])
    with pytest.raises(FmrilmError, match="non-empty module names"):
        get_backbone(folder, lora_targets=[])


def test_hub_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-llama"
    _save(repo / "snapshots" / "abc123", "llama")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model, _, spec = get_backbone("someone/tiny-llama")
    assert spec.name == "someone/tiny-llama" and spec.lora_targets == LLAMA_TARGETS
    assert type(model).__name__ == "LlamaForCausalLM"
    with pytest.raises(FmrilmError, match="weights must be local"):
        get_backbone("someone/not-cached")


# ------------------------------------------------------------------------------------------
# peft LoRA on the spec's targets


@pytest.mark.parametrize("source", ["tiny", "gpt2"])
def test_peft_lora_wraps_the_backbone_with_the_spec_targets(tmp_path, source):
    peft = pytest.importorskip("peft")
    name = "tiny" if source == "tiny" else _save(tmp_path / "gpt2", "gpt2")
    model, tok, spec = get_backbone(name)
    lora = peft.get_peft_model(model, spec.lora_config(r=4, alpha=8))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lora.parameters())
    assert 0 < trainable < total
    adapted = {n.rsplit(".", 2)[-2] for n, _ in lora.named_modules() if n.endswith(".lora_A")}
    assert adapted == set(spec.lora_targets)
    # one training step moves only the adapters
    enc = tok(["the brain at rest", "a scan"], return_tensors="pt", padding=True)
    lora.train()
    loss = lora(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    grads = [n for n, p in lora.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


# ------------------------------------------------------------------------------------------
# refusals: one line each, before any weight is read


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_refuses_a_bert_folder(tmp_path):
    folder = _save(tmp_path / "bert", "bert", head="masked")
    with pytest.raises(FmrilmError, match="not a causal language model") as e:
        get_backbone(folder)
    assert "bert" in _one_line(e)
    with pytest.raises(FmrilmError, match="not a causal language model"):
        load_backbone(folder)


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "bert", "architectures": ["BertModel"]},
        {"model_type": "bert"},  # no architectures: still an encoder
        {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]},
        {"model_type": "vit", "hidden_size": 32, "num_attention_heads": 2},
        {"model_type": "llama", "architectures": ["LlamaModel"]},  # no LM head
    ],
)
def test_refuses_non_causal_configs_before_reading_weights(tmp_path, config):
    import json

    (tmp_path / "config.json").write_text(json.dumps(config))  # and no weights at all
    with pytest.raises(FmrilmError, match="not a causal language model") as e:
        get_backbone(tmp_path)
    _one_line(e)


def test_refuses_pickle_only_and_weightless_folders(tmp_path):
    folder = tmp_path / "pickled"
    _save(folder, "llama")
    state = transformers.AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(FmrilmError, match="only pickle weights") as e:
        get_backbone(folder)
    assert "pytorch_model.bin" in _one_line(e)
    with pytest.raises(FmrilmError, match="only pickle weights"):
        load_backbone(folder)

    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(FmrilmError, match="no model weights"):
        get_backbone(folder)


def test_refuses_unknown_names_and_missing_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(FmrilmError, match="smollm2-135m-instruct, tiny") as e:
        get_backbone("smollm9-1b")
    _one_line(e)
    with pytest.raises(FmrilmError, match="does not exist"):
        get_backbone(str(tmp_path / "nope"))
    with pytest.raises(FmrilmError, match="no config.json"):
        get_backbone(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(FmrilmError, match="is a file"):
        get_backbone(tmp_path / "weights.safetensors")
