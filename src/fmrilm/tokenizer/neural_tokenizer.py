"""The neural tokenizer: ROI time series -> discrete codes aligned to an LLM's embedding space.

>>> tok = FMRITokenizer.from_pretrained("runs/tokenizer")          # doctest: +SKIP
>>> tokens = tok.encode(series, tr=0.72, atlas=atlas)              # doctest: +SKIP
>>> tokens.ids.shape                 # (windows, ROIs, patches)    # doctest: +SKIP
>>> recon = tok.decode(tokens.ids, atlas=atlas)                    # doctest: +SKIP
>>> vec = tok.embed(series, tr=0.72, atlas=atlas)   # aligned with the text encoder's space

A saved tokenizer is a folder with ``config.json`` (format version, settings, the ROI embedding
recipe, a SHA-256 of the weights) and ``model.safetensors``. Loading checks the version and the
checksum and loads every tensor strictly; it never executes code from the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from fmrilm._version import __version__
from fmrilm.checkpoint import load_state_strict
from fmrilm.config import TokenizerConfig, from_dict, to_dict
from fmrilm.data.preprocess import resample, scale
from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path, read_meta, sha256_file, write_json
from fmrilm.tokenizer.align import Discriminator
from fmrilm.tokenizer.codes import complete_steps
from fmrilm.tokenizer.encoder import (
    MNI_SCALE_MM,
    NETWORK_VOCAB,
    RoiEmbedding,
    TokenTransformer,
    network_index,
    sinusoidal,
)
from fmrilm.tokenizer.quantizer import CosineVectorQuantizer

FORMAT = "fmrilm-tokenizer"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Tokens:
    """Codes of one scan: ``ids[w, r, p]`` is the code of ROI ``r``, patch ``p`` of window ``w``.

    ``starts`` holds each window's first frame (at the tokenizer's TR); the last window may be
    shorter than the others, and then its missing patches are ``-1``.
    """

    ids: np.ndarray
    starts: np.ndarray
    tr: float
    patch: int
    vectors: np.ndarray | None = (
        None  # (windows, ROIs, patches, code_dim) unit vectors, NaN = missing
    )

    @property
    def n_windows(self) -> int:
        return self.ids.shape[0]


@dataclass
class RoiGeometry:
    """What the tokenizer needs to know about an atlas: MNI centroids and network indices."""

    xyz: np.ndarray  # (R, 3) float32, mm
    networks: np.ndarray  # (R,) int64 into NETWORK_VOCAB

    @classmethod
    def from_atlas(cls, atlas: Any) -> RoiGeometry:
        rois = atlas.rois if hasattr(atlas, "rois") else atlas
        if not isinstance(rois, pd.DataFrame):
            raise FmrilmError(
                "atlas must be an fmrilm Atlas or a ROI table (name, x, y, z[, network])"
            )
        missing = [c for c in ("x", "y", "z") if c not in rois.columns]
        if missing:
            raise FmrilmError(f"ROI table lacks coordinate columns {missing} (MNI x, y, z in mm)")
        xyz = (
            rois[["x", "y", "z"]]
            .apply(pd.to_numeric, errors="coerce")
            .to_numpy(np.float32, copy=True)
        )
        if len(xyz) == 0:
            raise FmrilmError("ROI table is empty")
        if not np.isfinite(xyz).all():
            bad = rois.index[~np.isfinite(xyz).all(axis=1)].tolist()[:5]
            raise FmrilmError(f"ROI table has ROIs without finite MNI coordinates (rows {bad})")
        nets = rois["network"].fillna("") if "network" in rois.columns else [""] * len(rois)
        return cls(xyz=xyz, networks=network_index(nets))

    def __len__(self) -> int:
        return len(self.xyz)


class FMRITokenizer(nn.Module):
    """Transformer encoder -> cosine VQ -> transformer decoder, with language-alignment heads."""

    def __init__(
        self, config: TokenizerConfig, text_dim: int | None = None, llm_dim: int | None = None
    ):
        super().__init__()
        config.validate()
        self.config = config
        self.text_dim = text_dim
        self.llm_dim = llm_dim
        c = config
        self.roi = RoiEmbedding(c.d_model, c.fourier_features, c.fourier_sigma, seed=c.seed)
        self.patch_in = nn.Linear(c.patch, c.d_model)
        self.encoder = TokenTransformer(c.d_model, c.n_heads, c.enc_layers, c.ff_mult, c.dropout)
        self.to_code = nn.Linear(c.d_model, c.code_dim)
        self.quantizer = CosineVectorQuantizer(
            c.codebook_size, c.code_dim, c.ema_decay, c.dead_code_threshold
        )
        self.from_code = nn.Linear(c.code_dim, c.d_model)
        self.decoder = TokenTransformer(c.d_model, c.n_heads, c.dec_layers, c.ff_mult, c.dropout)
        self.patch_out = nn.Linear(c.d_model, c.patch)
        if text_dim:
            self.text_head = nn.Sequential(
                nn.Linear(2 * c.code_dim, c.d_model), nn.GELU(), nn.Linear(c.d_model, text_dim)
            )
            self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
            # mean text embedding of the training scans: descriptor texts share their template,
            # so raw sentence embeddings are all alike (mean cosine ~0.8); centring keeps what
            # differs between scans
            self.register_buffer("text_center", torch.zeros(text_dim))
        if llm_dim:
            # a code vector lives in code_dim dimensions, words in llm_dim: a nonlinear map
            # lets the projected codes bend towards the word manifold
            self.to_llm = nn.Sequential(
                nn.Linear(c.code_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim)
            )
            if c.adversarial:
                self.discriminator = Discriminator(llm_dim)

    # -- tensors in, tensors out ---------------------------------------------------------------
    def _roi_time(self, xyz: torch.Tensor, networks: torch.Tensor, n_patches: int) -> torch.Tensor:
        roi = self.roi(xyz, networks)  # (R, d) or (B, R, d)
        pos = sinusoidal(n_patches, self.config.d_model, device=roi.device)
        return roi.unsqueeze(-2) + pos  # (..., R, P, d)

    def encode_vectors(
        self, x: torch.Tensor, xyz: torch.Tensor, networks: torch.Tensor
    ) -> torch.Tensor:
        """Continuous encoder output (B, R, P, code_dim) for windows ``x`` (B, T, R)."""
        b, t, r = x.shape
        p = t // self.config.patch
        if p < 1:
            raise FmrilmError(
                f"window of {t} frames is shorter than one patch ({self.config.patch} frames)"
            )
        x = x[:, : p * self.config.patch]
        patches = x.reshape(b, p, self.config.patch, r).permute(0, 3, 1, 2)  # (B, R, P, patch)
        h = self.patch_in(patches) + self._roi_time(xyz, networks, p)
        return self.to_code(self.encoder(h))

    def decode_vectors(
        self, q: torch.Tensor, xyz: torch.Tensor, networks: torch.Tensor
    ) -> torch.Tensor:
        """Reconstruct windows (B, P*patch, R) from code vectors ``q`` (B, R, P, code_dim)."""
        b, r, p, _ = q.shape
        h = self.decoder(self.from_code(q) + self._roi_time(xyz, networks, p))
        out = self.patch_out(h).reshape(b, r, p * self.config.patch)
        return out.transpose(1, 2)

    def pooled_text_vector(self, q: torch.Tensor) -> torch.Tensor:
        """A window's position in the text encoder's space, from its code vectors only."""
        flat = q.flatten(1, 2)
        pooled = torch.cat([flat.mean(1), flat.std(1, unbiased=False)], dim=-1)
        return F.normalize(self.text_head(pooled).float(), dim=-1)

    def text_vectors(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Frozen-encoder sentence embeddings -> this tokenizer's text space (centred, unit)."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        return F.normalize(raw - self.text_center.cpu(), dim=-1)

    def forward(
        self, x: torch.Tensor, xyz: torch.Tensor, networks: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        z = self.encode_vectors(x, xyz, networks)
        q, ids, commit = self.quantizer(z)
        recon = self.decode_vectors(q, xyz, networks)
        return {"q": q, "ids": ids, "commit": commit, "recon": recon}

    @torch.no_grad()
    def quantize_windows(
        self, x: torch.Tensor, xyz: torch.Tensor, networks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Code ids (B, R, P) and code vectors (B, R, P, code_dim) of prepared windows."""
        z = self.encode_vectors(x, xyz, networks)
        ids = self.quantizer.nearest(F.normalize(z.reshape(-1, z.shape[-1]).float(), dim=-1))
        return ids.reshape(z.shape[:-1]), self.quantizer.lookup(ids).reshape(z.shape)

    @torch.no_grad()
    def roundtrip(self, windows: np.ndarray, *, atlas: Any) -> tuple[np.ndarray, np.ndarray]:
        """Encode and decode already prepared windows (n, frames, R) -> (ids, reconstruction)."""
        xyz, nets = self.geometry(atlas)
        self.eval()
        t = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(xyz.device)
        ids, q = self.quantize_windows(t, xyz, nets)
        return ids.cpu().numpy(), self.decode_vectors(q, xyz, nets).cpu().numpy()

    # -- numpy API -------------------------------------------------------------------------------
    def geometry(self, atlas: Any) -> tuple[torch.Tensor, torch.Tensor]:
        geo = atlas if isinstance(atlas, RoiGeometry) else RoiGeometry.from_atlas(atlas)
        dev = self.patch_in.weight.device
        return torch.from_numpy(geo.xyz).to(dev), torch.from_numpy(geo.networks).to(dev)

    def prepare(self, series: Any, tr: float | None = None, *, what: str = "scan") -> np.ndarray:
        """Resample a (frames, ROIs) series to the tokenizer's TR and scale it per ROI."""
        data, tr = _unpack(series, tr)
        if data.ndim != 2:
            raise FmrilmError(f"{what}: expected a (frames, ROIs) array, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise FmrilmError(f"{what}: series contains NaN or infinite values")
        x = resample(np.asarray(data, dtype=np.float32), tr, self.config.tr)
        if x.shape[0] < self.config.patch:
            raise FmrilmError(
                f"{what}: {x.shape[0]} frames at TR {self.config.tr:g} s, shorter than one patch "
                f"({self.config.patch} frames = {self.config.patch * self.config.tr:g} s)"
            )
        return scale(x, self.config.scaling)

    def windows(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Non-overlapping windows of a prepared series; the tail keeps whole patches only."""
        w, p = self.config.window, self.config.patch
        starts = list(range(0, x.shape[0] - w + 1, w))
        tail = starts[-1] + w if starts else 0
        if x.shape[0] - tail >= p:
            starts.append(tail)
        chunks = [x[s : s + min(w, (x.shape[0] - s) // p * p)] for s in starts]
        return np.array(starts), chunks

    @torch.no_grad()
    def encode(
        self,
        series: Any,
        *,
        atlas: Any,
        tr: float | None = None,
        what: str = "scan",
        with_vectors: bool = False,
    ) -> Tokens:
        """Code ids (windows, ROIs, patches) of one scan (a Scan or a (frames, ROIs) array).

        ``with_vectors`` also returns the continuous encoder outputs (unit vectors, before
        quantization) -- the input of stage 2's continuous-projector ablation.
        """
        x = self.prepare(series, tr, what=what)
        xyz, nets = self.geometry(atlas)
        _check_rois(x, xyz, what)
        starts, chunks = self.windows(x)
        ids = np.full((len(chunks), x.shape[1], self.config.n_patches), -1, dtype=np.int64)
        self.eval()
        vectors = None
        if with_vectors:
            shape = (*ids.shape, self.config.code_dim)
            vectors = np.full(shape, np.nan, dtype=np.float32)
        for i, batch in _batches_by_length(chunks):
            t = torch.from_numpy(np.stack(batch)).to(xyz.device)
            codes = self.quantize_windows(t, xyz, nets)[0].cpu().numpy()
            ids[i, :, : codes.shape[-1]] = codes
            if vectors is not None:
                z = F.normalize(self.encode_vectors(t, xyz, nets).float(), dim=-1)
                vectors[i, :, : codes.shape[-1]] = z.cpu().numpy()
        return Tokens(
            ids=ids, starts=starts, tr=self.config.tr, patch=self.config.patch, vectors=vectors
        )

    @torch.no_grad()
    def decode(self, ids: np.ndarray | Tokens, *, atlas: Any) -> np.ndarray:
        """Reconstructed windows (windows, frames, ROIs) in scaled units; -1 patches are dropped."""
        if isinstance(ids, Tokens):
            ids = ids.ids
        ids = np.asarray(ids)
        if ids.ndim == 2:
            ids = ids[None]
        if ids.ndim != 3:
            raise FmrilmError(f"ids must have shape (windows, ROIs, patches), got {ids.shape}")
        if ids.max(initial=-1) >= self.config.codebook_size:
            raise FmrilmError(
                f"code id {int(ids.max())} is outside this tokenizer's codebook "
                f"({self.config.codebook_size} codes)"
            )
        xyz, nets = self.geometry(atlas)
        if ids.shape[1] != len(xyz):
            raise FmrilmError(f"ids have {ids.shape[1]} ROIs but the atlas has {len(xyz)}")
        self.eval()
        out = []
        for window in ids:
            valid = complete_steps(window)
            q = self.quantizer.lookup(torch.from_numpy(window[:, :valid]).to(xyz.device))
            out.append(self.decode_vectors(q[None], xyz, nets)[0].cpu().numpy())
        return out if len({o.shape for o in out}) > 1 else np.stack(out)

    @torch.no_grad()
    def embed(self, series: Any, *, atlas: Any, tr: float | None = None) -> np.ndarray:
        """The scan's unit vector in the text encoder's space (mean over its windows)."""
        if not self.text_dim:
            raise FmrilmError("this tokenizer was trained without the contrastive text alignment")
        x = self.prepare(series, tr)
        xyz, nets = self.geometry(atlas)
        _check_rois(x, xyz, "scan")
        _, chunks = self.windows(x)
        self.eval()
        vecs = []
        for _, batch in _batches_by_length(chunks):
            t = torch.from_numpy(np.stack(batch)).to(xyz.device)
            q = self.quantize_windows(t, xyz, nets)[1]
            vecs.append(self.pooled_text_vector(q))
        v = torch.cat(vecs).mean(0)
        return F.normalize(v, dim=-1).cpu().numpy()

    def code_embeddings_for_llm(self) -> torch.Tensor:
        """The codebook projected into the LLM's embedding space (codebook_size, llm_dim)."""
        if not self.llm_dim:
            raise FmrilmError("this tokenizer has no projection into an LLM's embedding space")
        with torch.no_grad():
            return self.to_llm(self.quantizer.codebook).detach().clone()

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` then ``config.json`` (the commit point), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            safetensors.torch.save_file(  # looked up at call time (tests simulate a full disk)
                state, str(tmp), metadata={"format": FORMAT}
            )
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fmrilm_version": __version__,
            "config": to_dict(self.config),
            "text_dim": self.text_dim,
            "llm_dim": self.llm_dim,
            "network_vocab": list(NETWORK_VOCAB),
            "roi_embedding": {
                "recipe": "random Fourier features of MNI xyz / "
                f"{MNI_SCALE_MM:g} mm (buffer roi.frequencies, 3 x {self.config.fourier_features})"
                " -> MLP, plus an embedding of the network label (network_vocab; 0 = unknown)",
                "mni_scale_mm": MNI_SCALE_MM,
            },
            "preprocessing": {
                "tr": self.config.tr,
                "scaling": self.config.scaling,
                "resampling": "scipy.signal.resample_poly",
                "window_frames": self.config.window,
                "patch_frames": self.config.patch,
            },
            "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
            **(extra or {}),
        }
        write_json(directory / CONFIG_FILE, meta)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> FMRITokenizer:
        """Load a saved tokenizer; refuses other versions, changed files and partial weights."""
        directory = Path(directory)
        meta = read_meta(
            directory / CONFIG_FILE,
            FORMAT,
            FORMAT_VERSION,
            missing=f"{directory} is not an fmrilm tokenizer (no {CONFIG_FILE})",
            wrong_format=f"{directory}: {CONFIG_FILE} is not an fmrilm tokenizer config",
            wrong_version=f"{directory}: tokenizer format version {{found}} differs from "
            "this fmrilm's {expected}; retrain it or use a matching fmrilm",
        )
        if meta.get("network_vocab") != list(NETWORK_VOCAB):
            raise FmrilmError(f"{directory}: network vocabulary differs from this fmrilm's")
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise FmrilmError(f"{directory}: {WEIGHTS_FILE} is missing")
        if sha256_file(weights) != meta.get("weights_sha256"):
            raise FmrilmError(
                f"{weights}: checksum does not match {CONFIG_FILE} (corrupt or replaced file)"
            )
        config = from_dict(TokenizerConfig, meta["config"], where=str(directory / CONFIG_FILE))
        model = cls(config, text_dim=meta.get("text_dim"), llm_dim=meta.get("llm_dim"))
        try:
            state = load_file(str(weights), device=device)
        except (SafetensorError, OSError) as exc:
            raise FmrilmError(f"{weights}: cannot read ({exc})") from None
        load_state_strict(model, state, str(weights))
        return model.to(device).eval()


def _unpack(series: Any, tr: float | None) -> tuple[np.ndarray, float]:
    if hasattr(series, "data") and hasattr(series, "tr"):  # fmrilm.data.scan.Scan
        return np.asarray(series.data), float(tr or series.tr)
    if tr is None or not tr > 0:
        raise FmrilmError("tr (seconds) is required when encoding a plain array")
    return np.asarray(series), float(tr)


def _check_rois(x: np.ndarray, xyz: torch.Tensor, what: str) -> None:
    if x.shape[1] != len(xyz):
        raise FmrilmError(f"{what}: series has {x.shape[1]} ROIs but the atlas has {len(xyz)}")


def _batches_by_length(chunks: list[np.ndarray], size: int = 64):
    """Group window indices of equal length into batches."""
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        by_len.setdefault(len(c), []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), size):
            sel = idx[k : k + size]
            yield sel, [chunks[i] for i in sel]
