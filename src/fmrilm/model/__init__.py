"""Language-model backbones: the local default LLM, user-supplied causal LMs, tiny test models."""

from fmrilm.model.backbones import DEFAULT_BACKBONE, load_backbone, tiny_llama

__all__ = ["DEFAULT_BACKBONE", "load_backbone", "tiny_llama"]
