"""The offline Hugging Face causal-LM loader and registry (used by corpus, tokenizer and model)."""

from fmrilm.llm.backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    get_backbone,
    load_backbone,
    resolve_backbone,
    tiny_llama,
    tiny_tokenizer,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "get_backbone",
    "load_backbone",
    "resolve_backbone",
    "tiny_llama",
    "tiny_tokenizer",
]
