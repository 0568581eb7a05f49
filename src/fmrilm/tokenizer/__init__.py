"""Stage 1: the language-aligned neural tokenizer (fMRI ROI series -> discrete codes)."""

from fmrilm.tokenizer.neural_tokenizer import FMRITokenizer, RoiGeometry, Tokens

__all__ = ["FMRITokenizer", "RoiGeometry", "Tokens"]
