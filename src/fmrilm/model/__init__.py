"""Language-model backbones and the joint fMRI-language model (stage 2)."""

from fmrilm.model.backbones import (
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
