"""Build a descriptive corpus for a cohort: descriptors -> JSON record -> text variants.

Layout of a corpus folder::

    CORPUS/
      corpus.json            format, descriptor version, cohort id, variants, seed, part size
      norms.json             cohort norms fitted on the training split (reused on re-runs)
      parts/part-NNNNN.parquet   one row per scan: scan_id, subject, atlas, descriptor_version,
                                 record (JSON), texts (list of strings), skipped (reason or "")

Scans are cut into fixed parts in manifest order; each part is written atomically. A re-run
skips parts that exist and produces identical output (every random choice is seeded by scan id).
``shard=(i, n)`` builds parts ``i, i+n, ...`` so a scheduler can spread the work; shard jobs need
the norms first (``fmrilm corpus norms``), since norms come from all training scans.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fmrilm.corpus.descriptors import DESCRIPTOR_VERSION, Context, Descriptor, families
from fmrilm.corpus.descriptors.dynamics import window_fc
from fmrilm.corpus.norms import CorpusNorms, fit_norms, normable
from fmrilm.corpus.paraphrase import Paraphraser, paraphrase_description
from fmrilm.corpus.text import describe, leaked_labels
from fmrilm.data.cohort import Cohort
from fmrilm.data.scan import check_series
from fmrilm.errors import FmrilmError
from fmrilm.io import read_json, read_meta, write_json, write_parquet

CORPUS_FORMAT = "fmrilm-corpus"


def scan_context(cohort: Cohort, row: pd.Series, norms: Any = None) -> Context:
    atlas = cohort.atlas(row["atlas"])
    events = cohort.events(row["scan_id"])
    qc = {k[3:]: float(row[k]) for k in ("qc_tsnr", "qc_fd_mean") if pd.notna(row[k])}
    return Context(
        scan_id=row["scan_id"],
        series=np.asarray(cohort.series(row["scan_id"]), dtype=np.float64),
        tr=float(row["tr"]),
        roi_names=atlas.names,
        networks=atlas.networks,
        coords=atlas.coords,
        events=events,
        qc=qc,
        norms=norms,
    )


def compute_all(ctx: Context, only: tuple[str, ...] | None = None) -> list[Descriptor]:
    """Every family's descriptors for one scan (``only`` restricts the families)."""
    out: list[Descriptor] = []
    for name, fn in families().items():
        if only is None or name in only:
            out.extend(fn(ctx))
    return out


def make_record(descs: list[Descriptor], norms) -> dict[str, Any]:
    """Descriptor name -> dict(value, unit, family, provenance, z), plus derived rankings."""
    record = {}
    for d in descs:
        if norms is not None and normable(d):
            d.z = norms.z(d.name, d.value)
        record[d.name] = d.to_dict()
    pairs = [
        (n, r["z"])
        for n, r in record.items()
        if n.startswith(("fc.within.", "fc.between.")) and r["z"] is not None
    ]
    if pairs:
        ranked = sorted(pairs, key=lambda p: p[1])
        record["fc.top_decreased"] = _ranking(
            "fc.top_decreased", [n for n, z in ranked[:3] if z < 0]
        )
        record["fc.top_increased"] = _ranking(
            "fc.top_increased", [n for n, z in ranked[::-1][:3] if z > 0]
        )
    return record


def _ranking(name: str, names: list[str]) -> dict[str, Any]:
    return Descriptor(
        name,
        names,
        "",
        "connectivity",
        "network FC descriptors with the most negative/positive z (train-split norms)",
    ).to_dict()


def describe_scan(
    cohort: Cohort,
    row: pd.Series,
    norms: CorpusNorms,
    n_variants: int,
    seed: int,
    cached: list[Descriptor] | None = None,
) -> dict[str, Any]:
    """One corpus row for one scan (skipped with a reason when its data are unusable)."""
    base = {
        "scan_id": row["scan_id"],
        "subject": row["subject"],
        "atlas": row["atlas"],
        "descriptor_version": DESCRIPTOR_VERSION,
    }
    atlas_norms = norms.for_atlas(row["atlas"])
    ctx = scan_context(cohort, row, atlas_norms)
    try:
        check_series(ctx.series, what=f"scan {row['scan_id']}", roi_names=ctx.roi_names)
    except FmrilmError as exc:
        return {**base, "record": "{}", "texts": [], "skipped": str(exc)}
    if cached is None:
        descs = compute_all(ctx)
    else:
        # the norm-fitting pass had no dynamic-FC states yet: recompute that family only
        descs = [d for d in cached if d.family != "dynamics"] + compute_all(ctx, only=("dynamics",))
    record = make_record(descs, atlas_norms)
    texts = [describe(record, row["scan_id"], v, seed) for v in range(n_variants)]
    labels = _labels(cohort, row, ctx.events)
    for text in texts:
        leaks = leaked_labels(text, labels)
        if leaks:  # a template bug, never the user's fault: fail loudly
            raise RuntimeError(
                f"descriptor text of {row['scan_id']} leaks labels {leaks}: {text!r}"
            )
    return {**base, "record": json.dumps(record, sort_keys=True), "texts": texts, "skipped": ""}


def _labels(cohort: Cohort, row: pd.Series, events: pd.DataFrame | None) -> list[str]:
    """Values the text must never contain: categorical phenotypes, task, site, condition names."""
    values = [
        str(row[c])
        for c in cohort.phenotype_columns
        if c in row and pd.notna(row[c]) and cohort.meta["phenotypes"][c] == "categorical"
    ]
    values += [row["task"], row["site"]] if row["site"] else [row["task"]]
    if events is not None:
        values += [str(t) for t in events["trial_type"].unique()]
    return [v for v in values if v]


# many small matrices: multi-threaded BLAS is slower here (joblib workers limit themselves)
@threadpool_limits.wrap(limits=1)
def build_corpus(
    cohort_dir: str | Path,
    out: str | Path,
    *,
    norms_path: str | Path | None = None,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    n_variants: int = 3,
    seed: int = 0,
    part_size: int = 256,
    progress: bool = True,
    paraphrase: bool | Callable[[list[str]], list[str]] = False,
) -> dict[str, Any]:
    """Build (or resume) the corpus of ``cohort_dir`` in ``out``; returns counts and timing.

    With ``paraphrase`` (True, or any callable mapping sentences to rewrites) the local LLM
    rewrites the first text variant of every scan, sentence by sentence; a rewrite that drops or
    changes a fact is rejected and the template sentence kept (``fmrilm.corpus.paraphrase``).
    Slow on a CPU: meant for small cohorts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    cohort = Cohort(cohort_dir)
    meta = _open_corpus(out, cohort, n_variants, seed, part_size, bool(paraphrase))
    cached: dict[str, list[Descriptor]] = {}
    if norms_path is not None:
        norms = CorpusNorms.load(Path(norms_path))
        norms.save(out / "norms.json")
    elif (out / "norms.json").exists():
        norms = CorpusNorms.load(out / "norms.json")
    elif shard is not None and shard[1] > 1:
        raise FmrilmError(
            f"{out} has no norms.json: run 'fmrilm corpus norms {cohort_dir} --out {out}' once before "
            "sharded builds (norms come from all training scans)"
        )
    else:
        norms, cached = fit_corpus_norms(cohort, seed=seed, jobs=jobs, progress=progress)
        norms.save(out / "norms.json")
    n_parts = int(np.ceil(len(cohort) / part_size))
    parts = range(n_parts) if shard is None else range(shard[0], n_parts, shard[1])
    todo = [p for p in parts if not (out / "parts" / f"part-{p:05d}.parquet").exists()]
    n_scans = sum(min(part_size, len(cohort) - p * part_size) for p in todo)
    paraphraser = None  # loaded on first use: the LLM takes seconds and GBs
    bar = tqdm(total=n_scans, desc="corpus", unit="scan", disable=not progress)
    with bar:
        for p in todo:
            rows = cohort.manifest.iloc[p * part_size : (p + 1) * part_size]
            results = Parallel(n_jobs=jobs)(
                delayed(_describe_row)(
                    cohort.root, row, norms, n_variants, seed, cached.get(row["scan_id"])
                )
                for _, row in rows.iterrows()
            )
            bar.update(len(rows))
            if paraphrase:
                if paraphraser is None:
                    paraphraser = paraphrase if callable(paraphrase) else Paraphraser()
                _add_paraphrases(cohort, rows, results, paraphraser)
            write_parquet(out / "parts" / f"part-{p:05d}.parquet", pd.DataFrame(results))
    meta["n_parts"] = n_parts
    write_json(out / "corpus.json", meta)
    return {
        "parts_written": len(todo),
        "parts_total": n_parts,
        "scans_written": n_scans,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _add_paraphrases(cohort: Cohort, rows: pd.DataFrame, results: list[dict], paraphraser) -> None:
    """Add ``paraphrases`` (checked rewrite of the first variant) and ``paraphrase_stats``."""
    for (_, row), result in zip(rows.iterrows(), results, strict=True):
        if result["skipped"] or not result["texts"]:
            result["paraphrases"], result["paraphrase_stats"] = [], "{}"
            continue
        labels = _labels(cohort, row, cohort.events(row["scan_id"]))
        text, stats = paraphrase_description(result["texts"][0], paraphraser, labels)
        result["paraphrases"] = [text] if stats["accepted"] else []
        result["paraphrase_stats"] = json.dumps({**stats, "reasons": dict(stats["reasons"])})


def _describe_row(
    root: Path, row: pd.Series, norms, n_variants: int, seed: int, cached
) -> dict[str, Any]:
    # each worker opens the cohort itself: memory maps do not travel between processes
    return describe_scan(_cohort(root), row, norms, n_variants, seed, cached)


_COHORTS: dict[str, Cohort] = {}


def _cohort(root: Path) -> Cohort:
    key = str(root)
    if key not in _COHORTS:
        _COHORTS[key] = Cohort(root)
    return _COHORTS[key]


def fit_corpus_norms(
    cohort: Cohort, *, seed: int = 0, jobs: int = 1, progress: bool = True
) -> tuple[CorpusNorms, dict[str, list[Descriptor]]]:
    """Norms from the cohort's training split, and the training scans' raw descriptors.

    The descriptors are returned so the build reuses them instead of computing the training
    scans twice (only dynamic-FC states, which need the norms, are recomputed).
    """
    train = cohort.split("train")
    rows = [row for _, row in train.iterrows()]
    items = []
    with tqdm(
        total=len(rows), desc="norms (train split)", unit="scan", disable=not progress
    ) as bar:
        for item in Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_raw_row)(cohort.root, row) for row in rows
        ):
            items.append(item)
            bar.update()
    norms = fit_norms(items, cohort_id=cohort.meta["cohort_id"], seed=seed)
    return norms, {scan_id: descs for _, scan_id, descs, _ in items}


def _raw_row(root: Path, row: pd.Series) -> tuple[str, str, list[Descriptor], np.ndarray]:

    ctx = scan_context(_cohort(root), row)
    return row["atlas"], row["scan_id"], compute_all(ctx), window_fc(ctx.series, ctx.tr)


def _open_corpus(
    out: Path, cohort: Cohort, n_variants: int, seed: int, part_size: int, paraphrase: bool = False
) -> dict[str, Any]:
    meta = {
        "format": CORPUS_FORMAT,
        "version": 1,
        "descriptor_version": DESCRIPTOR_VERSION,
        "cohort_id": cohort.meta["cohort_id"],
        "cohort": str(cohort.root),
        "n_variants": n_variants,
        "seed": seed,
        "part_size": part_size,
        "paraphrase": paraphrase,
    }
    path = out / "corpus.json"
    if path.exists():
        old = read_meta(
            path,
            CORPUS_FORMAT,
            DESCRIPTOR_VERSION,
            version_key="descriptor_version",
            wrong_format=f"{out} is not an fmrilm corpus folder",
            wrong_version=f"{out} was built with descriptor version {{found}}; this fmrilm "
            "computes version {expected}: refusing to mix them (build into a new folder)",
        )
        for key in ("cohort_id", "n_variants", "seed", "part_size", "paraphrase"):
            if old.get(key, False) != meta[key]:
                raise FmrilmError(
                    f"{out} was built with {key}={old.get(key)!r}, this build has {meta[key]!r}: refusing to mix "
                    "(build into a new folder)"
                )
        return old
    # a folder holding only norms.json (from 'fmrilm corpus norms') is where a sharded build starts
    if out.exists() and any(
        p
        for p in out.iterdir()
        if not p.name.startswith(".") and p.name not in ("norms.json", "parts")
    ):
        raise FmrilmError(f"{out} is not empty and holds no corpus; choose an empty or new --out")
    (out / "parts").mkdir(parents=True, exist_ok=True)
    write_json(path, meta)
    return meta


class Corpus:
    """Read access to a corpus folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "corpus.json"
        self.meta = read_json(path, missing=f"{self.root} is not an fmrilm corpus (no corpus.json)")
        if self.meta.get("descriptor_version") != DESCRIPTOR_VERSION:
            raise FmrilmError(
                f"{self.root}: corpus descriptor version {self.meta.get('descriptor_version')} differs from "
                f"this fmrilm's {DESCRIPTOR_VERSION}; rebuild it"
            )
        files = sorted((self.root / "parts").glob("part-*.parquet"))
        if not files:
            raise FmrilmError(f"{self.root}: corpus has no parts yet (run fmrilm corpus build)")
        self.table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    def __len__(self) -> int:
        return len(self.table)

    def row(self, scan_id: str) -> pd.Series:
        hit = self.table[self.table["scan_id"] == scan_id]
        if hit.empty:
            raise FmrilmError(f"{self.root}: no scan {scan_id!r} in the corpus")
        return hit.iloc[0]

    def record(self, scan_id: str) -> dict[str, Any]:
        return json.loads(self.row(scan_id)["record"])

    def texts(self, scan_id: str) -> list[str]:
        return list(self.row(scan_id)["texts"])
