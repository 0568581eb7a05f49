"""Ingest: turn a source (builtin data, BIDS/fMRIPrep, NIfTI, CIFTI, ROI files) into a cohort.

Every source module exposes ``discover(spec, options) -> list[RawRun]``; discovery is cheap
(paths and metadata only). The driver :func:`import_source` then loads, validates and
preprocesses each run -- in parallel with ``jobs`` -- and appends it to the cohort store in the
main process. ``shard=(i, n)`` keeps every n-th run starting at i, so a scheduler can split the
work over machines (each writes its own cohort folder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.atlas import Atlas
from fmrilm.data.cohort import CohortWriter
from fmrilm.data.preprocess import PreprocessConfig, preprocess
from fmrilm.data.scan import Scan
from fmrilm.errors import FmrilmError


@dataclass
class Loaded:
    """What a run's loader returns: raw parcellated series and what cleaning needs."""

    data: np.ndarray  # (n_frames, n_rois), raw units
    atlas: Atlas
    confounds: np.ndarray | None = None  # (n_frames, n_confounds)
    sample_mask: np.ndarray | None = None  # frame indices to keep
    qc: dict[str, float] = field(default_factory=dict)  # e.g. fd_mean from fMRIPrep confounds


@dataclass
class RawRun:
    """One run found by discovery; ``load()`` does the expensive part."""

    subject: str
    load: Callable[[], Loaded]
    tr: float | None
    source: str
    session: str = ""
    run: str = ""
    site: str = ""
    task: str = "rest"
    events: pd.DataFrame | None = None
    phenotypes: dict[str, Any] = field(default_factory=dict)

    @property
    def paradigm(self) -> str:
        return "rest" if self.task.lower().startswith("rest") else "task"

    @property
    def scan_id(self) -> str:
        return Scan(
            np.zeros((1, 1)), None, self.subject, self.session, self.run, task=self.task
        ).scan_id


@dataclass
class ImportOptions:
    atlas: str | None = None  # builtin atlas name or label image path
    atlas_labels: str | None = None
    roi_table: str | None = None
    tr: float | None = None
    phenotypes: str | None = None  # extra phenotype table (participant_id + columns)
    array_key: str | None = None  # key inside .h5/.mat files
    site: str = ""


def discover(source: str, options: ImportOptions) -> list[RawRun]:
    """Dispatch a SOURCE string to the module that understands it."""
    if source.startswith("builtin:"):
        from fmrilm.data.ingest import builtin

        return builtin.discover(source.split(":", 1)[1], options)
    path = Path(source)
    if not path.exists():
        raise FmrilmError(
            f"source {source} does not exist (expected builtin:hcp, builtin:gw or a path)"
        )
    if path.is_dir():
        if (path / "dataset_description.json").exists() or any(
            path.glob("sub-*/**/func/*_bold.nii*")
        ):
            from fmrilm.data.ingest import bids

            return bids.discover(path, options)
        from fmrilm.data.ingest import roi_files

        return roi_files.discover(path, options)
    name = path.name
    if name.endswith((".dtseries.nii",)):
        from fmrilm.data.ingest import cifti

        return cifti.discover(path, options)
    if name.endswith((".nii", ".nii.gz")):
        from fmrilm.data.ingest import nifti

        return nifti.discover(path, options)
    from fmrilm.data.ingest import roi_files

    return roi_files.discover(path, options)


def _process(run: RawRun, config: PreprocessConfig) -> tuple[Scan, Atlas]:
    loaded = run.load()
    data, tr, qc = preprocess(
        loaded.data,
        run.tr,
        config,
        what=f"{run.source} ({run.scan_id})",
        confounds=loaded.confounds,
        sample_mask=loaded.sample_mask,
        roi_names=loaded.atlas.names,
    )
    qc.update(loaded.qc)
    scan = Scan(
        data=data,
        tr=tr,
        subject=run.subject,
        session=run.session,
        run=run.run,
        site=run.site,
        paradigm=run.paradigm,
        task=run.task,
        events=run.events,
        phenotypes=run.phenotypes,
        atlas=loaded.atlas.name,
        qc=qc,
        source=run.source,
    )
    return scan, loaded.atlas


def import_source(
    source: str,
    out: str | Path,
    *,
    options: ImportOptions | None = None,
    config: PreprocessConfig | None = None,
    mode: str = "create",
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import SOURCE into the cohort at ``out``; returns counts and timing."""
    import time

    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    options = options or ImportOptions()
    config = config or PreprocessConfig()
    t0 = time.perf_counter()
    runs = discover(source, options)
    if shard is not None:
        i, n = shard
        runs = runs[i::n]
    if not runs:
        raise FmrilmError(f"no fMRI runs found in {source}")
    ids = [r.scan_id for r in runs]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise FmrilmError(
            f"{source}: several runs map to the same scan id {dup[:3]} (add session/run labels)"
        )
    with CohortWriter(out, preprocessing=config.to_dict(), mode=mode) as writer:
        todo = [r for r in runs if not (mode == "resume" and writer.has(r.scan_id))]
        if mode != "resume":
            clash = [r.scan_id for r in runs if writer.has(r.scan_id)]
            if clash:
                raise FmrilmError(
                    f"duplicate scan id {clash[0]}: {out} already holds it (use --resume to skip stored scans)"
                )
        writer.n_skipped = len(runs) - len(todo)
        writer.add_source(source)
        # joblib streams results in order; the writer stays in this process (one file handle).
        results = Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_process)(r, config) for r in todo
        )
        # the context closes the bar before an error propagates: the message gets its own line
        with tqdm(total=len(todo), desc="import", unit="scan", disable=not progress) as bar:
            for scan, atlas in results:
                writer.add_atlas(atlas)
                writer.add(scan)
                bar.update()
    return {
        "source": source,
        "out": str(out),
        "added": writer.n_added,
        "skipped": writer.n_skipped,
        "seconds": round(time.perf_counter() - t0, 2),
    }
