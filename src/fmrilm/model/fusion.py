"""Early fusion of fMRI tokens and text in one causal LM (stage 2).

fMRI codes become new vocabulary entries. They live in their own embedding table (codebook
size + 3 delimiters), next to the backbone's frozen word embeddings, so LoRA adapters and the
new rows are the only trainable weights. Ids are one sequence space:

* ``0 .. text_size - 1``: the text tokenizer's ids (the backbone's embeddings and LM head);
* ``text_size + c`` for code ``c`` of the fMRI tokenizer (``0 <= c < n_codes``);
* ``text_size + n_codes + {0, 1, 2}``: ``<fmri>``, ``</fmri>`` and the time-step delimiter.

Every id is derived from the two tokenizers (:class:`FmriVocab`), never written as a literal.
The new code rows start as the fMRI tokenizer's codebook projected into the LLM's embedding
space (:meth:`fmrilm.tokenizer.FMRITokenizer.code_embeddings_for_llm`); the delimiters start at
the mean word embedding. A separate output head (zero-initialised) scores the next fMRI token
over the codebook, so positions that predict codes never pay for the full text vocabulary.

A window of ROI x patch codes is laid out time step by time step::

    <fmri> <step> c(roi 1, t 1) ... c(roi R, t 1) <step> c(roi 1, t 2) ... </fmri>

so next-token prediction inside the span is temporal prediction: the codes of step t given all
earlier steps (and the earlier ROIs of step t).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from peft import get_peft_model
from safetensors.torch import load_file
from torch import nn

from fmrilm.checkpoint import load_trainable, trainable_state, versions
from fmrilm.config import PretrainConfig, from_dict, to_dict
from fmrilm.data.atlas import load_atlas
from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path, read_json, read_meta, sha256_file, write_json
from fmrilm.llm import get_backbone
from fmrilm.model.generate import describe_batch
from fmrilm.model.objectives import DESCRIBE
from fmrilm.model.qa import candidate_logprobs, render, softmax
from fmrilm.model.vocab import FmriVocab
from fmrilm.runtime import use_bf16
from fmrilm.tokenizer.align import embed_texts
from fmrilm.tokenizer.codes import complete_steps
from fmrilm.tokenizer.neural_tokenizer import FMRITokenizer


class FMRILM(nn.Module):
    """A causal LM that reads and predicts fMRI codes next to text.

    ``backbone`` is a Hugging Face causal LM (optionally wrapped by peft); only its input
    embeddings, decoder stack and LM head are used.
    """

    def __init__(
        self,
        backbone,
        vocab: FmriVocab,
        code_embeddings: torch.Tensor | None = None,
        projector: nn.Module | None = None,
    ):
        super().__init__()
        # the continuous ablation: code positions get projector(encoder vector) as input
        self.projector = projector
        self.backbone = backbone
        self.vocab = vocab
        emb = backbone.get_input_embeddings()
        hidden = emb.weight.shape[1]
        if emb.weight.shape[0] < vocab.text_size:
            raise FmrilmError(
                f"the backbone has {emb.weight.shape[0]} word embeddings but the text tokenizer "
                f"{vocab.text_size} tokens"
            )
        self.fmri_embed = nn.Embedding(vocab.n_new, hidden)
        with torch.no_grad():
            mean = emb.weight.float().mean(0)
            self.fmri_embed.weight.copy_(mean.expand(vocab.n_new, hidden))
            if code_embeddings is not None:
                if code_embeddings.shape != (vocab.n_codes, hidden):
                    raise FmrilmError(
                        f"code embeddings have shape {tuple(code_embeddings.shape)}; the backbone "
                        f"needs ({vocab.n_codes}, {hidden}) -- the tokenizer was aligned to another "
                        "LLM (retrain it with llm=<this backbone>)"
                    )
                self.fmri_embed.weight[: vocab.n_codes] = code_embeddings.float()
        # scores the next fMRI code. Zero-initialised (a uniform first guess, loss ln K):
        # initialised like a tied head on the new rows it started at a loss of ~12 nats with
        # SmolLM2, confidently wrong, since hidden states at fMRI positions are word-like
        self.fmri_head = nn.Linear(hidden, vocab.n_codes, bias=False)
        nn.init.zeros_(self.fmri_head.weight)

    @classmethod
    def from_pretrained(cls, directory, device: str = "cpu") -> FMRILM:
        """Load a stage-2 folder (see :func:`save_model`); the model carries its tokenizers as
        ``.text_tokenizer`` and ``.fmri_tokenizer`` and its settings as ``.pretrain_config``."""
        model, text_tok, fmri_tok, config = load_model(directory, device)
        # plain attributes, not submodules: the fMRI tokenizer is an nn.Module whose weights
        # must stay out of the model's parameters (and so out of training and saved weights)
        for p in fmri_tok.parameters():
            p.requires_grad_(False)
        model.__dict__.update(
            text_tokenizer=text_tok,
            fmri_tokenizer=fmri_tok,
            pretrain_config=config,
            info=read_json(Path(directory) / "config.json"),
        )
        return model

    # -- using a loaded model ----------------------------------------------------------------------
    def _loaded(self, what: str):
        tok = getattr(self, "fmri_tokenizer", None)
        if tok is None or getattr(self, "text_tokenizer", None) is None:
            raise FmrilmError(f"{what} needs a model loaded with FMRILM.from_pretrained(dir)")
        return tok

    def scan_span(
        self, scan, *, atlas=None, tr: float | None = None, window: int = 0, start: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The codes (ROIs, span_patches) the model reads of one scan, and their vectors.

        ``scan``: a :class:`fmrilm.data.Scan` (its ``tr`` and builtin ``atlas`` name are used
        unless given) or a (frames, ROIs) array with ``atlas=`` (an Atlas or ROI table) and
        ``tr=``. The span is ``span_patches`` time steps from patch ``start`` of window
        ``window`` -- the length the model saw in training (stage 3's, if instruction-tuned).
        """
        fmri_tok = self._loaded("scan_span")
        if atlas is None:
            name = getattr(scan, "atlas", "")
            if not name:
                raise FmrilmError("pass atlas= (an Atlas or ROI table) for an array input")

            atlas = load_atlas(name)
        vectors_needed = self.projector is not None
        tokens = fmri_tok.encode(scan, atlas=atlas, tr=tr, with_vectors=vectors_needed)
        n_windows = tokens.ids.shape[0]
        if not -n_windows <= window < n_windows:
            raise FmrilmError(f"window={window}: the scan has {n_windows} window(s)")
        codes = tokens.ids[window]
        tuned = (getattr(self, "info", {}).get("instruct") or {}).get("config", {})
        span = int(tuned.get("span_patches", 0)) or self.pretrain_config.span_patches
        valid = complete_steps(codes)
        if not 0 <= start < valid:
            raise FmrilmError(f"start={start}: window {window} has {valid} time step(s)")
        codes = codes[:, start : start + span]
        vectors = None
        if vectors_needed:
            vectors = tokens.vectors[window][:, start : start + span]
        return codes, vectors

    def ask(
        self,
        scan,
        question: str,
        *,
        atlas=None,
        tr: float | None = None,
        window: int = 0,
        start: int = 0,
        max_new_tokens: int = 160,
        greedy: bool = True,
        bf16: bool | None = None,
        summary: str | None = None,
    ) -> str:
        """Free-text answer to ``question`` about one scan (greedy decoding is deterministic).

        A stage-2 model was trained on one instruction only ("Describe this brain scan."), so
        other questions are answered zero-shot from that training. ``summary``: the scan's
        descriptor line (:func:`fmrilm.tasks.descriptor_line` of its corpus record), put
        between the scan and the question as in instruction tuning.
        """
        if not str(question).strip():
            raise FmrilmError("the question is empty")
        codes, vectors = self.scan_span(scan, atlas=atlas, tr=tr, window=window, start=start)
        if bf16 is None:
            bf16 = use_bf16(self.pretrain_config.bf16, str(self.fmri_embed.weight.device))
        return describe_batch(
            self,
            self.text_tokenizer,
            [codes],
            max_new_tokens,
            greedy,
            instruction=_with_summary(question, summary),
            bf16=bf16,
            vectors=None if vectors is None else [vectors],
        )[0]

    def choose(
        self,
        scan,
        question: str,
        candidates,
        *,
        atlas=None,
        tr: float | None = None,
        window: int = 0,
        start: int = 0,
        bf16: bool | None = None,
        summary: str | None = None,
    ) -> dict[str, float]:
        """Probabilities of closed-set answers to ``question`` (constrained decoding).

        Each candidate is scored by the log-likelihood of its tokens after the prompt
        (:func:`fmrilm.model.qa.candidate_logprobs`); the softmax over candidates is returned,
        most probable first. ``summary``: the scan's descriptor line, as in :meth:`ask`.
        """
        candidates = [str(c) for c in candidates]
        if len(candidates) < 2:
            raise FmrilmError("choose needs at least two candidate answers")
        codes, _ = self.scan_span(scan, atlas=atlas, tr=tr, window=window, start=start)
        if self.projector is not None:
            raise FmrilmError("constrained answers need a model with discrete fMRI input")
        if bf16 is None:
            bf16 = use_bf16(self.pretrain_config.bf16, str(self.fmri_embed.weight.device))
        segments = [("scan", "query"), ("text", "\n" + _with_summary(question, summary))]
        prompt = render(self, self.text_tokenizer, segments, {"query": codes}.__getitem__).ids
        p = softmax(candidate_logprobs(self, self.text_tokenizer, prompt, candidates, bf16=bf16))
        order = np.argsort(-p, kind="stable")
        return {candidates[i]: float(p[i]) for i in order}

    def retrieve(
        self,
        *,
        text: str | None = None,
        scan=None,
        gallery,
        k: int = 5,
        atlas=None,
        tr: float | None = None,
        text_encoder=None,
    ) -> list[tuple[str, float]]:
        """Text -> scans or scan -> texts, by cosine similarity in the tokenizer's text space.

        * ``text=...``: ``gallery`` is a Cohort (every scan) or ``(cohort, rows)`` with manifest
          rows; returns the ``k`` most similar ``(scan_id, similarity)``.
        * ``scan=...`` (a Scan or an array with ``atlas=``/``tr=``): ``gallery`` is a list of
          texts; returns the ``k`` most similar ``(text, similarity)``.

        Scans are embedded by the stage-1 tokenizer (:meth:`FMRITokenizer.embed`), texts by its
        frozen sentence encoder (``text_encoder``: a function texts -> raw vectors, for tests).
        """
        tok = self._loaded("retrieve")
        if (text is None) == (scan is None):
            raise FmrilmError("retrieve: pass exactly one of text= or scan=")
        if not tok.text_dim:
            raise FmrilmError("retrieve needs a tokenizer trained with the text alignment")
        if k < 1:
            raise FmrilmError(f"retrieve: k must be >= 1, got {k}")
        if text_encoder is None:

            def text_encoder(texts):
                return embed_texts(texts, tok.config.text_encoder, tok.config.llm)

        if text is not None:
            cohort, rows = gallery if isinstance(gallery, tuple) else (gallery, None)
            rows = cohort.manifest if rows is None else rows
            if len(rows) == 0:
                raise FmrilmError("retrieve: the gallery has no scans")
            names = rows["scan_id"].tolist()
            vecs = np.stack(
                [
                    tok.embed(cohort.series(r.scan_id), atlas=cohort.atlas(r.atlas), tr=float(r.tr))
                    for r in rows.itertuples()
                ]
            )
            query = tok.text_vectors(text_encoder([str(text)])).numpy()[0]
        else:
            names = [str(t) for t in gallery]
            if not names:
                raise FmrilmError("retrieve: the gallery has no texts")
            if atlas is None:
                if not getattr(scan, "atlas", ""):
                    raise FmrilmError("pass atlas= (an Atlas or ROI table) for an array input")

                atlas = load_atlas(scan.atlas)
            vecs = tok.text_vectors(text_encoder(names)).numpy()
            query = tok.embed(scan, atlas=atlas, tr=tr)
        sims = vecs @ query
        order = np.argsort(-sims, kind="stable")[:k]
        return [(names[i], float(sims[i])) for i in order]

    def describe(self, scan, **kwargs) -> str:
        """A description of one scan in the words of the descriptive corpus (see :meth:`ask`)."""
        return self.ask(scan, DESCRIBE, **kwargs)

    # -- pieces of the backbone -------------------------------------------------------------------
    def _base(self):
        model = self.backbone
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        return model

    def embed(self, ids: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings; with a projector and ``vectors`` (B, L, dim), code positions take
        the projected continuous vectors instead of the code embeddings."""
        words = self.backbone.get_input_embeddings()
        is_text = ids < self.vocab.text_size
        out = words(torch.where(is_text, ids, torch.zeros_like(ids)))
        new = self.fmri_embed(
            torch.where(is_text, torch.zeros_like(ids), ids - self.vocab.text_size)
        )
        out = torch.where(is_text.unsqueeze(-1), out, new.to(out.dtype))
        if self.projector is not None:
            if vectors is None:
                raise FmrilmError("this model reads continuous fMRI vectors; pass vectors=")
            is_code = (ids >= self.vocab.text_size) & (ids < self.vocab.start)
            proj = self.projector(vectors.to(out.dtype)).to(out.dtype)
            out = torch.where(is_code.unsqueeze(-1), proj, out)
        return out

    def hidden_states(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        vectors: torch.Tensor | None = None,
    ):
        decoder = self._base().get_decoder()
        embeds = self.embed(ids, vectors)
        return decoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state

    # -- training losses ------------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        loss_mask=None,
        vectors: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Next-token losses: text targets through the LM head, code targets through the fMRI head.

        ``loss_mask`` (B, L) bool marks the target positions that count (e.g. only the
        description after an fMRI span); by default every non-padding target counts, except
        delimiters, which are deterministic.
        """
        h = self.hidden_states(ids, attention_mask, vectors)[:, :-1]
        target = ids[:, 1:]
        text_sel, code_sel = self.target_masks(ids, attention_mask, loss_mask)
        out: dict[str, torch.Tensor] = {}
        if text_sel.any():
            logits = self._base().get_output_embeddings()(h[text_sel])
            nll = F.cross_entropy(logits.float(), target[text_sel], reduction="sum")
            out["text_loss_sum"], out["text_tokens"] = nll, text_sel.sum()
            out["text_loss"] = nll / text_sel.sum()
        if code_sel.any():
            logits = self.fmri_head(h[code_sel].to(self.fmri_head.weight.dtype))
            codes = target[code_sel] - self.vocab.text_size
            nll = F.cross_entropy(logits.float(), codes, reduction="sum")
            out["fmri_loss_sum"], out["fmri_tokens"] = nll, code_sel.sum()
            out["fmri_loss"] = nll / code_sel.sum()
            out["fmri_correct"] = (logits.argmax(-1) == codes).sum()
            out["fmri_acc"] = out["fmri_correct"].float() / code_sel.sum()
        return out

    def target_masks(
        self, ids: torch.Tensor, attention_mask=None, loss_mask=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which next-token targets count as text and as fMRI codes, each (B, L - 1) bool."""
        target = ids[:, 1:]
        keep = torch.ones_like(target, dtype=torch.bool)
        if attention_mask is not None:
            keep &= attention_mask[:, 1:].bool()
        if loss_mask is not None:
            keep &= loss_mask[:, 1:].bool()
        is_text = target < self.vocab.text_size
        is_code = (target >= self.vocab.text_size) & (target < self.vocab.start)
        return keep & is_text, keep & is_code


# -- persistence ---------------------------------------------------------------------------------

MODEL_FORMAT = "fmrilm-model"
MODEL_FORMAT_VERSION = 1


def save_model(
    model: FMRILM, directory, pretrain_config, fmri_tokenizer, extra: dict | None = None
) -> None:
    """Write a model folder: trainable weights, the fMRI tokenizer, config.json last.

    The frozen backbone is not copied: ``config.json`` names it (``llm``) and loading rebuilds
    it from the registry, then applies the saved LoRA adapters and fMRI tables. ``extra``
    (JSON-able, e.g. stage 3's settings and tasks) is stored in config.json as is.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fmri_tokenizer.save_pretrained(directory / "tokenizer")
    state = {k: v.detach().cpu().contiguous() for k, v in trainable_state(model).items()}
    with atomic_path(directory / "trainable.safetensors") as tmp:
        safetensors.torch.save_file(  # looked up at call time (tests simulate a full disk)
            state, str(tmp), metadata={"format": MODEL_FORMAT}
        )
    write_json(
        directory / "config.json",
        {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "versions": versions(),
            "pretrain": to_dict(pretrain_config),
            "vocab": {"text_size": model.vocab.text_size, "n_codes": model.vocab.n_codes},
            "weights_sha256": sha256_file(directory / "trainable.safetensors"),
            **(extra or {}),
        },
    )


def build_model(
    config: PretrainConfig, fmri_tok: FMRITokenizer, backbone=None, text_tokenizer=None, spec=None
):
    """The backbone with LoRA adapters and the fMRI vocabulary; only new weights train."""
    if backbone is None:
        backbone, text_tokenizer, spec = get_backbone(config.llm)
    for p in backbone.parameters():
        p.requires_grad_(False)
    lora = spec.lora_config(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout)
    peft_model = get_peft_model(backbone, lora)
    vocab = FmriVocab.from_tokenizers(text_tokenizer, fmri_tok)
    hidden = backbone.get_input_embeddings().weight.shape[1]
    codes = None
    if fmri_tok.llm_dim:
        if fmri_tok.llm_dim != hidden:
            raise FmrilmError(
                f"the fMRI tokenizer projects codes to {fmri_tok.llm_dim} dimensions but "
                f"{config.llm} has {hidden}; retrain the tokenizer with llm={config.llm}"
            )
        codes = fmri_tok.code_embeddings_for_llm()
    projector = None
    if config.fmri_input == "continuous":
        if fmri_tok.llm_dim:  # start from the tokenizer's trained projection into the LLM
            projector = copy.deepcopy(fmri_tok.to_llm)
        else:
            projector = torch.nn.Linear(fmri_tok.config.code_dim, hidden)
        for p in projector.parameters():
            p.requires_grad_(True)
    return FMRILM(peft_model, vocab, codes, projector), text_tokenizer


def load_model(directory, device: str = "cpu"):
    """(FMRILM, text tokenizer, fMRI tokenizer, PretrainConfig) from a folder of save_model."""
    directory = Path(directory)
    meta = read_meta(
        directory / "config.json",
        MODEL_FORMAT,
        MODEL_FORMAT_VERSION,
        missing=f"{directory} is not an fmrilm model (no config.json)",
        wrong_format=f"{directory}: config.json is not an fmrilm stage-2 model",
        wrong_version=f"{directory}: model format version {{found}} differs from this "
        "fmrilm's {expected}",
    )
    weights = directory / "trainable.safetensors"
    if not weights.is_file() or sha256_file(weights) != meta.get("weights_sha256"):
        raise FmrilmError(f"{weights}: missing, or its checksum does not match config.json")
    config = from_dict(PretrainConfig, meta["pretrain"], where=str(directory / "config.json"))
    fmri_tok = FMRITokenizer.from_pretrained(directory / "tokenizer", device=device)
    model, text_tok = build_model(config, fmri_tok)
    if {"text_size": model.vocab.text_size, "n_codes": model.vocab.n_codes} != meta["vocab"]:
        raise FmrilmError(
            f"{directory}: the backbone's tokenizer differs from the one trained with"
        )
    state = load_file(str(weights), device=device)
    load_trainable(
        model, state, f"{weights}: trainable weights do not match {config.llm} with this config"
    )
    return model.to(device).eval(), text_tok, fmri_tok, config


def _with_summary(question: str, summary: str | None) -> str:
    """``question`` after the descriptor line (the instruction-tuning layout), stripped."""
    if not str(question).strip():
        raise FmrilmError("the question is empty")
    line = str(summary).strip() if summary else ""
    return (f"{line}\n" if line else "") + str(question).strip()
