"""BIDS datasets: raw BIDS, fMRIPrep derivatives, and parcellated derivatives (XCP-D).

Volume runs are ``sub-*/[ses-*/]func/*_bold.nii[.gz]``, parcellated like a single NIfTI
(:mod:`fmrilm.data.ingest.nifti`). Files that differ only in derivative entities (space, desc,
res, ...) are one run, and one file is chosen: ``desc-preproc`` (fMRIPrep) over anything else,
then ``space-MNI152*`` (``MNI152NLin2009cAsym`` first, then by name). A run with only non-MNI
outputs (e.g. ``space-T1w``) is refused; raw runs without a ``space`` entity are accepted and
must already be in MNI space (see the overlap check in :mod:`~fmrilm.data.ingest.nifti`).

Metadata, following the BIDS inheritance principle (file folder up to the dataset root, then
the raw dataset behind a derivatives folder):

* TR: ``--tr``, else ``RepetitionTime`` of the most specific ``*_bold.json``, else the header;
* events: the most specific ``*_events.tsv``;
* phenotypes: ``participants.tsv`` (dataset, else raw dataset), then ``--phenotypes``;
* confounds (fMRIPrep): ``*_desc-confounds_timeseries.tsv`` beside the run is read with
  nilearn's ``load_confounds`` (motion ``full`` + ``high_pass`` + ``wm_csf`` ``basic``;
  non-steady-state frames are censored through ``sample_mask``). nilearn needs the confounds'
  JSON sidecar only for CompCor, not for this strategy. When nilearn refuses the run (e.g. an
  uncompressed ``.nii``, two candidate confounds files, missing columns), the same columns are
  selected directly (:func:`plain_confounds`) and a warning says so. ``qc['fd_mean']`` is the
  mean ``framewise_displacement``.

A dataset with no ``*_bold.nii*`` but ``*_timeseries.tsv`` files (XCP-D) is read as ROI files
(:mod:`~fmrilm.data.ingest.roi_files`); with several parcellations (``seg-``/``atlas-``
entities) ``--atlas`` picks one.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from nilearn.interfaces.fmriprep import load_confounds as nilearn_load_confounds

from fmrilm.data.atlas import Atlas
from fmrilm.data.ingest import nifti, roi_files
from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.data.ingest.common import (
    NA_VALUES,
    acquisition_key,
    check_phenotype_match,
    find_sidecar,
    forget_listings,
    phenotype_table,
    run_fields,
    sidecar_dirs,
    sidecar_tr,
    source_datasets,
    split_name,
)
from fmrilm.errors import FmrilmError

CONFOUND_STRATEGY = ("motion", "high_pass", "wm_csf")
_MOTION = tuple(f"{kind}_{axis}" for kind in ("trans", "rot") for axis in "xyz")
_MOTION_SUFFIXES = ("", "_derivative1", "_power2", "_derivative1_power2")  # nilearn's "full"
_SPACE_RANK = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")


def discover(root: Path, options: ImportOptions) -> list[RawRun]:
    """Runs of a BIDS dataset (raw or fMRIPrep), or of XCP-D parcellated derivatives."""
    forget_listings()  # sidecars may have changed since an earlier discovery
    root = Path(root)
    raw = source_datasets(root)
    phenotypes = phenotype_table(options, (root, *raw))
    bolds = _func_files(root, ("_bold.nii", "_bold.nii.gz"))
    if bolds:
        atlas = nifti.volume_atlas(options)
        runs = [_volume_run(p, root, raw, atlas, phenotypes, options) for p in select_runs(bolds)]
    else:
        runs = _discover_parcellated(root, raw, phenotypes, options)
    check_phenotype_match(phenotypes, runs, options)
    return runs


def select_runs(files: list[Path]) -> list[Path]:
    """One file per acquisition: ``desc-preproc`` first, then MNI space (see module doc)."""
    groups: dict[tuple, list[Path]] = {}
    for path in files:
        groups.setdefault(acquisition_key(path), []).append(path)
    return [_preferred(sorted(group)) for _, group in sorted(groups.items())]


def load_run(path: Path, atlas: Atlas, confounds: Path | None) -> Loaded:
    """Parcellate one run and attach its fMRIPrep confounds, if any."""
    data, present = nifti.parcellate(path, atlas)
    if confounds is None:
        return Loaded(data=data, atlas=present)
    regressors, sample_mask, fd_mean = load_confounds(path, confounds, n_frames=data.shape[0])
    qc = {} if fd_mean is None else {"fd_mean": fd_mean}
    return Loaded(data=data, atlas=present, confounds=regressors, sample_mask=sample_mask, qc=qc)


def load_confounds(
    image: Path, path: Path, n_frames: int
) -> tuple[np.ndarray | None, np.ndarray | None, float | None]:
    """fMRIPrep confounds of ``image``: (regressors, sample_mask, mean framewise displacement)."""
    table = _read_confounds(path)
    if len(table) != n_frames:
        raise FmrilmError(f"{path}: {len(table)} rows but {image.name} has {n_frames} frames")
    fd = table["framewise_displacement"] if "framewise_displacement" in table else None
    fd_mean = float(np.nanmean(fd)) if fd is not None and fd.notna().any() else None
    try:
        regressors, mask = _nilearn_confounds(image)
        return regressors, mask, fd_mean
    except ValueError as exc:  # nilearn's way of refusing a file name, version or column set
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    warnings.warn(
        f"{path}: nilearn's load_confounds refused it ({reason}); selecting motion, "
        "white-matter/CSF and cosine columns directly",
        stacklevel=2,
    )
    regressors, mask = plain_confounds(table, what=str(path))
    return (regressors.to_numpy() if regressors.shape[1] else None), mask, fd_mean


def plain_confounds(
    table: pd.DataFrame, what: str = "confounds"
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The columns of nilearn's default strategy, selected without its loader.

    Motion (6 parameters with derivatives and squares), ``cosine*`` and ``white_matter``/``csf``;
    frames flagged by ``non_steady_state_outlier*`` or ``motion_outlier*`` columns are left out
    of ``sample_mask``. As in nilearn, the first-row NaN of derivatives takes the second row's
    value, and regressors are demeaned over the kept frames.
    """
    motion = [m + s for m in _MOTION for s in _MOTION_SUFFIXES]
    wanted = [
        c
        for c in table.columns
        if c in motion or c.startswith("cosine") or c in ("white_matter", "csf")
    ]
    outliers = [
        c for c in table.columns if c.startswith(("non_steady_state_outlier", "motion_outlier"))
    ]
    regressors = table[wanted].astype(float).copy()
    if len(regressors) > 1:
        first = regressors.iloc[0].isna()
        regressors.loc[regressors.index[0], first] = regressors.iloc[1][first]
    if regressors.isna().any().any():
        bad = regressors.columns[regressors.isna().any()].tolist()
        raise FmrilmError(f"{what}: missing values (n/a) in {bad[:3]} beyond the first row")
    flagged = table[outliers].fillna(0).astype(float).to_numpy().any(axis=1) if outliers else None
    mask = np.flatnonzero(~flagged) if flagged is not None and flagged.any() else None
    kept = regressors if mask is None else regressors.iloc[mask]
    return regressors - kept.mean(), mask


# --------------------------------------------------------------------------------------------
# internals


def _func_files(root: Path, endings: tuple[str, ...]) -> list[Path]:
    found = [*root.glob("sub-*/func/*"), *root.glob("sub-*/ses-*/func/*")]
    return sorted(p for p in found if p.name.endswith(endings) and p.is_file())


def _preferred(group: list[Path]) -> Path:
    entities = {p: split_name(p)[0] for p in group}
    preproc = [p for p in group if entities[p].get("desc") == "preproc"]
    candidates = preproc or group
    spaces = {p: entities[p].get("space", "") for p in candidates}
    mni = [p for p in candidates if spaces[p].startswith("MNI152")]
    if mni:
        rank = {s: i for i, s in enumerate(_SPACE_RANK)}
        return min(mni, key=lambda p: (rank.get(spaces[p], len(rank)), p.name))
    unspaced = [p for p in candidates if not spaces[p] and not preproc]
    if unspaced:
        return unspaced[0]  # raw BIDS: assumed to be MNI already (checked by the overlap test)
    found = sorted({s or "native" for s in spaces.values()})
    raise FmrilmError(
        f"{group[0]}: this run has no MNI-space image (spaces: {', '.join(found)}); fmrilm "
        "parcellates in MNI space -- run fMRIPrep with --output-spaces MNI152NLin2009cAsym"
    )


def _volume_run(
    path: Path,
    root: Path,
    raw: tuple[Path, ...],
    atlas: Atlas,
    phenotypes: dict[str, dict],
    options: ImportOptions,
) -> RawRun:
    img = nifti.open_image(path)
    nifti.check_overlap(img, atlas, path)
    dirs = sidecar_dirs(path, root, raw)
    return RawRun(
        load=functools.partial(load_run, path, atlas, _confounds_file(path)),
        tr=nifti.resolve_tr(img, path, options, sidecar_tr(path, ("bold",), dirs)),
        **run_fields(path, dirs, phenotypes, options),
    )


def _confounds_file(path: Path) -> Path | None:
    found = find_sidecar(path, ("timeseries", "regressors"), ".tsv", [path.parent])
    found = [p for p in found if split_name(p)[0].get("desc") == "confounds"]
    return found[0] if found else None


def _read_confounds(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", na_values=NA_VALUES, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for malformed text
        raise FmrilmError(f"confounds file {path}: cannot parse ({exc})") from None
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if text:
        raise FmrilmError(f"confounds file {path}: non-numeric column(s) {text[:3]}")
    return table


def _nilearn_confounds(image: Path) -> tuple[np.ndarray, np.ndarray | None]:

    regressors, mask = nilearn_load_confounds(
        str(image), strategy=CONFOUND_STRATEGY, motion="full", wm_csf="basic"
    )
    return regressors.to_numpy(dtype=float), None if mask is None else np.asarray(mask)


def _discover_parcellated(
    root: Path, raw: tuple[Path, ...], phenotypes: dict[str, dict], options: ImportOptions
) -> list[RawRun]:
    """XCP-D style ``*_timeseries.tsv`` (region names in the header), read as ROI files."""
    series = [
        p
        for p in _func_files(root, ("_timeseries.tsv",))
        if split_name(p)[0].get("desc") != "confounds"
        and split_name(p)[0].get("stat", "mean") == "mean"
    ]
    if not series:
        raise FmrilmError(
            f"{root}: no fMRI runs found (neither sub-*/[ses-*/]func/*_bold.nii[.gz] nor parcellated "
            "*_timeseries.tsv files)"
        )
    by_parcellation: dict[str, list[Path]] = {}
    for p in series:
        entities = split_name(p)[0]
        by_parcellation.setdefault(entities.get("seg") or entities.get("atlas") or "", []).append(p)
    choice = _choose_parcellation(root, sorted(by_parcellation), options.atlas)
    # --atlas that named the parcellation is used up; otherwise it is a ROI table for its columns
    series_options = (
        dataclasses.replace(options, atlas=None) if options.atlas == choice else options
    )
    return roi_files.runs_from_files(
        by_parcellation[choice], series_options, root=root, extra_roots=raw, phenotypes=phenotypes
    )


def _choose_parcellation(root: Path, available: list[str], requested: str | None) -> str:
    if requested in available:
        return requested
    if len(available) == 1 and requested is None:
        return available[0]
    listing = ", ".join(available)
    if requested is None:
        raise FmrilmError(
            f"{root}: time series for several parcellations ({listing}); choose one with --atlas NAME"
        )
    if len(available) > 1:
        raise FmrilmError(
            f"--atlas {requested}: {root} has time series for {listing}; choose one of them"
        )
    return available[0]  # one parcellation; --atlas is then a ROI table/atlas for its columns
