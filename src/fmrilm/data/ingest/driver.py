"""The ingest driver: dispatch a SOURCE to its reader, then load, preprocess and store runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from fmrilm.data.atlas import Atlas
from fmrilm.data.cohort import CohortWriter
from fmrilm.data.ingest import bids, builtin, cifti, nifti, roi_files
from fmrilm.data.ingest.base import ImportOptions, RawRun
from fmrilm.data.preprocess import PreprocessConfig, preprocess
from fmrilm.data.scan import Scan
from fmrilm.errors import FmrilmError


def discover(source: str, options: ImportOptions) -> list[RawRun]:
    """Dispatch a SOURCE string to the module that understands it."""
    if source.startswith("builtin:"):
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
            return bids.discover(path, options)
        return roi_files.discover(path, options)
    name = path.name
    if name.endswith((".dtseries.nii",)):
        return cifti.discover(path, options)
    if name.endswith((".nii", ".nii.gz")):
        return nifti.discover(path, options)
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
