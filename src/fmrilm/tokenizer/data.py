"""Training data for the tokenizer: a cohort split, prepared once, sampled as random windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from fmrilm.config import TokenizerConfig
from fmrilm.errors import FmrilmError
from fmrilm.tokenizer.neural_tokenizer import RoiGeometry


@dataclass
class AtlasScans:
    """Prepared scans of one atlas: each (frames, ROIs) at the tokenizer's TR, scaled."""

    atlas: str
    xyz: np.ndarray
    networks: np.ndarray
    scan_ids: list[str] = field(default_factory=list)
    series: list[np.ndarray] = field(default_factory=list)
    text: list[int] = field(default_factory=list)  # row into the text-embedding table, -1 = none


def load_scans(
    cohort,
    rows,
    config: TokenizerConfig,
    prepare,
    text_rows: dict[str, int] | None = None,
    progress: bool = True,
) -> dict[str, AtlasScans]:
    """Prepare the scans of ``rows`` (manifest rows) with ``prepare(series, tr, what=)``.

    Scans shorter than one window are left out (counted in the returned ``skipped``).
    """
    groups: dict[str, AtlasScans] = {}
    bar = tqdm(
        rows.iterrows(), total=len(rows), desc="prepare scans", leave=False, disable=not progress
    )
    for _, row in bar:
        sid = row["scan_id"]
        x = prepare(cohort.series(sid), float(row["tr"]), what=f"scan {sid}")
        if x.shape[0] < config.window:
            continue
        name = row["atlas"]
        if name not in groups:
            geo = RoiGeometry.from_atlas(cohort.atlas(name))
            groups[name] = AtlasScans(name, geo.xyz, geo.networks)
        if x.shape[1] != len(groups[name].xyz):
            raise FmrilmError(
                f"scan {sid}: {x.shape[1]} ROIs but atlas {name!r} lists {len(groups[name].xyz)}"
            )
        groups[name].scan_ids.append(sid)
        groups[name].series.append(x)
        groups[name].text.append((text_rows or {}).get(sid, -1))
    if not groups:
        raise FmrilmError(
            f"no scan is at least one window long ({config.window} frames at TR {config.tr:g} s)"
        )
    return groups


@dataclass
class Batch:
    x: torch.Tensor  # (B, window, R')
    xyz: torch.Tensor  # (B, R', 3)
    networks: torch.Tensor  # (R',)
    text: torch.Tensor  # (B,) rows into the text table, -1 = none
    scan_ids: list[str]


def sample_batch(
    groups: dict[str, AtlasScans], config: TokenizerConfig, step: int, train: bool = True
) -> Batch:
    """A batch for ``step``, a pure function of (seed, step): resuming replays the same data.

    One atlas per batch (chosen in proportion to its scans); distinct scans where possible (so
    in-batch negatives of the contrastive loss are other scans); a random window start per scan;
    in training a random subset of ROIs is dropped and centroids are jittered, so the model
    cannot rely on any fixed ROI set.
    """
    rng = np.random.default_rng([config.seed, step])
    names = sorted(groups)
    sizes = np.array([len(groups[n].series) for n in names], dtype=float)
    g = groups[names[int(rng.choice(len(names), p=sizes / sizes.sum()))]]
    n = len(g.series)
    pick = rng.choice(n, size=config.batch_size, replace=n < config.batch_size)
    xs = []
    for i in pick:
        s = g.series[i]
        start = int(rng.integers(0, s.shape[0] - config.window + 1))
        xs.append(s[start : start + config.window])
    x = np.stack(xs)
    r = x.shape[2]
    keep = np.arange(r)
    if train and config.roi_dropout > 0 and r > 4:
        n_keep = max(4, int(round(r * (1 - rng.uniform(0, config.roi_dropout)))))
        keep = np.sort(rng.choice(r, size=n_keep, replace=False))
    xyz = np.broadcast_to(g.xyz[keep], (len(pick), len(keep), 3)).astype(np.float32)
    if train and config.coord_jitter_mm > 0:
        xyz = xyz + rng.normal(0, config.coord_jitter_mm, size=xyz.shape).astype(np.float32)
    ids = [g.scan_ids[i] for i in pick]
    xt = torch.from_numpy(np.ascontiguousarray(x[:, :, keep]))
    if not torch.isfinite(xt).all():
        bad = [ids[i] for i in range(len(ids)) if not torch.isfinite(xt[i]).all()]
        raise FmrilmError(f"NaN or infinite values in the batch at step {step}: scans {bad[:3]}")
    return Batch(
        x=xt,
        xyz=torch.from_numpy(np.ascontiguousarray(xyz)),
        networks=torch.from_numpy(g.networks[keep]),
        text=torch.tensor([g.text[i] for i in pick]),
        scan_ids=ids,
    )
