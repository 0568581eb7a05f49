"""Use a trained tokenizer: encode a cohort to a token table; draw inspection figures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fmrilm import plotting
from fmrilm.data.cohort import Cohort
from fmrilm.errors import FmrilmError
from fmrilm.io import read_json, write_parquet
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.codes import full_windows


def encode_cohort(
    tokenizer: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every scan (of a split / shard) into ``out`` (Parquet, one row per window).

    Columns: scan_id, subject, split, atlas, window, start_s, n_rois, n_patches and ``ids``
    (int32 list of length n_rois * n_patches, ROI-major: ``ids[r * n_patches + p]``; -1 marks
    patches missing from a short last window).
    """
    out = Path(out)
    if out.suffix != ".parquet":
        raise FmrilmError(f"--out {out}: the token table is Parquet; name it *.parquet")
    tok = FMRITokenizer.from_pretrained(tokenizer)
    cohort = Cohort(data)
    rows = cohort.split(split) if split else cohort.manifest
    if shard is not None:
        i, n = shard
        rows = rows.iloc[i::n]
    if rows.empty:
        raise FmrilmError(f"{data}: no scans to encode (split {split!r}, shard {shard})")
    records = []
    t0 = time.perf_counter()
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="encode", disable=not progress):
        sid = row["scan_id"]
        tokens = tok.encode(
            cohort.series(sid),
            tr=float(row["tr"]),
            atlas=cohort.atlas(row["atlas"]),
            what=f"scan {sid}",
        )
        _, r, p = tokens.ids.shape
        for w in range(tokens.n_windows):
            records.append(
                {
                    "scan_id": sid,
                    "subject": row["subject"],
                    "split": row["split"],
                    "atlas": row["atlas"],
                    "window": w,
                    "start_s": float(tokens.starts[w] * tokens.tr),
                    "n_rois": r,
                    "n_patches": p,
                    "ids": tokens.ids[w].reshape(-1).astype(np.int32),
                }
            )
    seconds = time.perf_counter() - t0
    write_parquet(out, pd.DataFrame.from_records(records))
    return {
        "scans": len(rows),
        "windows": len(records),
        "seconds": round(seconds, 2),
        "scans_per_s": round(len(rows) / max(seconds, 1e-9), 2),
    }


def inspect_tokenizer(
    directory: str | Path,
    out: str | Path | None = None,
    *,
    data: str | Path | None = None,
    scan: str | None = None,
    n_rois: int = 4,
) -> list[Path]:
    """Training curves and code usage (from training.json); with ``data``, a reconstruction.

    The reconstruction figure takes ``scan`` (default: the first test scan of ``data``) and
    shows its first window for ``n_rois`` ROIs spread over the atlas.
    """
    directory = Path(directory)
    tok = FMRITokenizer.from_pretrained(directory)
    out = Path(out) if out else directory / "figures"
    info = read_json(directory / "training.json", missing=f"{directory}: no training.json")
    written = []
    if info.get("history"):
        written.append(plotting.training_curves(info["history"], out / "training_curves.png"))
    counts = (info.get("validation") or {}).get("code_counts")
    label = "validation scans"
    if data is not None:
        cohort = Cohort(data)
        if scan is None:
            test = cohort.manifest[cohort.manifest["split"] == "test"]
            scan = (test if len(test) else cohort.manifest)["scan_id"].iloc[0]
        row = cohort.row(scan)
        atlas = cohort.atlas(row["atlas"])
        x = tok.prepare(cohort.series(scan), float(row["tr"]), what=f"scan {scan}")
        wins = full_windows(tok, x)
        if len(wins) == 0:
            raise FmrilmError(f"scan {scan} is shorter than one window")
        recon = tok.roundtrip(wins[:1], atlas=atlas)[1][0]
        pick = np.linspace(0, x.shape[1] - 1, n_rois).round().astype(int)
        names = [atlas.rois["name"].iloc[i] for i in pick]
        r2 = 1 - ((wins[0] - recon) ** 2).sum() / ((wins[0] - wins[0].mean(0)) ** 2).sum()
        written.append(
            plotting.reconstruction(
                wins[0][:, pick],
                recon[:, pick],
                names,
                tok.config.tr,
                out / "reconstruction.png",
                title=f"{scan}, first window (R² over all ROIs {r2:.2f})",
            )
        )
        if counts is None:
            all_ids = tok.encode(x, tr=tok.config.tr, atlas=atlas).ids
            counts = np.bincount(all_ids[all_ids >= 0].ravel(), minlength=tok.config.codebook_size)
            label = f"scan {scan}"
    if counts is not None:
        written.append(
            plotting.code_usage(counts, out / "code_usage.png", title=f"codebook usage ({label})")
        )
    return written
