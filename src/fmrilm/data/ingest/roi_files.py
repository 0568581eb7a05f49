"""ROI time series that are already parcellated: one file, or a folder of files.

Formats (one run per file, time along the first axis):

* ``.npy`` -- a 2-D array (read with ``allow_pickle=False``);
* ``.csv`` / ``.tsv`` / ``.txt`` (comma / tab / whitespace) -- a header row, when any of its cells
  is not a number, names the ROIs; an unnamed first column (a pandas index) is dropped;
* ``.h5`` / ``.hdf5`` and ``.mat`` -- the array named by ``--key``, else the only 2-D numeric
  array (both sides > 1) in the file. MATLAB v7.3 files are HDF5 and store arrays transposed;
  they are read with h5py and transposed back.

ROI positions come from the header names of a known atlas (AAL family, HCPEx, Dosenbach-160;
:func:`fmrilm.data.atlas.resolve_roi_names`), or from ``--roi-table`` / ``--atlas`` (required for
unknown names and for formats without names). With a table and header names, columns are matched
by name, or by position when none of the header names is in the table. A ROI column missing in
every frame (XCP-D writes ``n/a`` for parcels below its coverage threshold) is dropped; any other
NaN/Inf is an error.

A folder contributes every supported file at its top level and under ``sub-*/``, except BIDS
tables (participants, events, sessions, scans, confounds), the ``--roi-table``/``--phenotypes``
files, and text tables whose header marks them as phenotype or ROI tables.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy.io import loadmat, whosmat

from fmrilm.data.atlas import Atlas, load_atlas, resolve_roi_names
from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.data.ingest.common import (
    NA_VALUES,
    check_phenotype_match,
    drop_empty_rois,
    forget_listings,
    phenotype_table,
    present_atlas,
    run_fields,
    sidecar_dirs,
    sidecar_tr,
    subset_name,
)
from fmrilm.errors import FmrilmError

TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": r"\s+"}
SUFFIXES = (".npy", *TEXT_SEPARATORS, ".h5", ".hdf5", ".mat")
# BIDS tables that sit beside ROI files but are not ROI time series
_NOT_SERIES = (
    "participants.",
    "_events.",
    "_sessions.",
    "_scans.",
    "_desc-confounds_",
    "dataset_description",
)
_MAT_NUMERIC = {"double", "single", *(f"{u}int{b}" for u in ("", "u") for b in (8, 16, 32, 64))}


@dataclass(frozen=True)
class ArrayRef:
    """Where a run's array lives: the file, the key inside it and how to orient it."""

    path: Path
    key: str | None = None
    hdf5: bool = False  # .h5, or MATLAB v7.3 (also HDF5)
    transpose: bool = False  # MATLAB v7.3 stores arrays column-major


def discover(path: Path, options: ImportOptions) -> list[RawRun]:
    """Runs for a ROI file, or for every ROI file in a folder (and its ``sub-*`` subfolders)."""
    forget_listings()  # sidecars may have changed since an earlier discovery
    path = Path(path)
    if path.is_file() and not path.name.endswith(SUFFIXES):
        raise FmrilmError(f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)}")
    files = _list_files(path, options) if path.is_dir() else [path]
    root = path if path.is_dir() else path.parent
    phenotypes = phenotype_table(options, [root])
    runs = runs_from_files(files, options, root=root, phenotypes=phenotypes)
    check_phenotype_match(phenotypes, runs, options)
    return runs


def runs_from_files(
    files: list[Path],
    options: ImportOptions,
    *,
    root: Path,
    extra_roots: tuple[Path, ...] = (),
    phenotypes: dict[str, dict],
) -> list[RawRun]:
    """One run per ROI file (also used for parcellated BIDS derivatives such as XCP-D's).

    ``root`` is the dataset folder (sidecars and events are looked up from the file's folder up
    to it, then in ``extra_roots``); ``phenotypes`` maps subject ids to their variables.
    """
    table = _coordinate_table(options)
    resolved: dict[tuple[str, ...] | None, Atlas] = {}
    runs = []
    for path in files:
        ref = _array_ref(path, options.array_key)
        names = _header_names(path)
        key = tuple(names) if names else None
        if key not in resolved:
            resolved[key] = _atlas_for(names, table, path)
        dirs = sidecar_dirs(path, root, extra_roots)
        runs.append(
            RawRun(
                load=functools.partial(load_roi_file, ref, resolved[key]),
                tr=_tr(path, dirs, options),
                **run_fields(path, dirs, phenotypes, options),
            )
        )
    return runs


def load_roi_file(ref: ArrayRef, atlas: Atlas) -> Loaded:
    """The raw (time, ROI) array of one file, as stored (orientation is checked downstream)."""
    data = read_array(ref)
    what = str(ref.path)
    n = len(atlas)
    # a transposed array (ROI count on axis 0) goes on unchanged: check_series names it as such
    if data.ndim == 2 and n not in data.shape:
        raise FmrilmError(
            f"{what}: has {data.shape[1]} ROI columns but the ROI table ({atlas.name}) lists {n} ROIs"
        )
    data, atlas = drop_empty_rois(data, atlas, empty="nan", what=what)
    return Loaded(data=data, atlas=atlas)


def read_array(ref: ArrayRef) -> np.ndarray:
    """Read the numeric array a reference points to (float64)."""
    path = ref.path
    try:
        if ref.hdf5:
            with h5py.File(path, "r") as f:
                data = np.asarray(f[ref.key][()])
        elif path.suffix == ".mat":
            data = loadmat(path, variable_names=[ref.key])[ref.key]
        elif path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = _read_text(path)
    except FmrilmError:
        raise
    except Exception as exc:  # numpy/h5py/scipy raise many types for corrupt files
        raise FmrilmError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(np.asarray(data).dtype, np.number):
        raise FmrilmError(f"{path}: values must be numeric, got dtype {np.asarray(data).dtype}")
    data = np.asarray(data, dtype=np.float64)
    return data.T if ref.transpose else data


# --------------------------------------------------------------------------------------------
# files and names


def _list_files(folder: Path, options: ImportOptions) -> list[Path]:
    skip = {Path(p).resolve() for p in (options.roi_table, options.phenotypes) if p}
    candidates = [*folder.iterdir(), *folder.glob("sub-*/**/*")]
    files = sorted(
        p
        for p in candidates
        if p.is_file()
        and p.name.endswith(SUFFIXES)
        and not p.name.startswith(".")
        and not any(tag in p.name for tag in _NOT_SERIES)
        and p.resolve() not in skip
        and not _is_table(p)
    )
    if not files:
        raise FmrilmError(f"{folder}: no ROI time-series files ({', '.join(SUFFIXES)}) found")
    return files


def _is_table(path: Path) -> bool:
    """A phenotype or ROI table lying beside the series (judged by its header), not a series."""
    columns = {c.lower() for c in _header_names(path) or ()}
    return bool(columns & {"participant_id", "subject"}) or {"name", "x", "y", "z"} <= columns


def _header_names(path: Path) -> list[str] | None:
    """ROI names from the first row of a text table, or None (no header / binary format)."""
    if path.suffix not in TEXT_SEPARATORS:
        return None
    try:
        with open(path, encoding="utf-8-sig") as fh:
            first = fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise FmrilmError(f"{path}: cannot read ({exc})") from None
    cells = [c.strip().strip('"') for c in re.split(TEXT_SEPARATORS[path.suffix], first)]
    if all(_is_number(c) for c in cells):
        return None
    if cells and cells[0] in ("", "Unnamed: 0"):
        cells = cells[1:]  # a pandas index column
    return cells


def _read_text(path: Path) -> np.ndarray:
    header = _header_names(path) is not None
    df = pd.read_csv(
        path,
        sep=TEXT_SEPARATORS[path.suffix],
        header=0 if header else None,
        na_values=NA_VALUES,
        keep_default_na=False,
        engine="python" if path.suffix == ".txt" else "c",
    )
    if header and str(df.columns[0]) in ("", "Unnamed: 0"):
        df = df.iloc[:, 1:]
    bad = [str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise FmrilmError(f"{path}: non-numeric values in column(s) {bad[:3]}")
    return df.to_numpy(dtype=np.float64)


def _is_number(cell: str) -> bool:
    if cell in NA_VALUES:
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _array_ref(path: Path, requested: str | None) -> ArrayRef:
    """Resolve ``--key`` (or the only 2-D array) for container formats."""
    if not path.is_file():
        raise FmrilmError(f"{path} does not exist")

    if path.suffix not in (".h5", ".hdf5", ".mat"):
        if requested:
            raise FmrilmError(f"--key {requested}: {path.name} is not an .h5/.mat file; drop --key")
        return ArrayRef(path)
    hdf5 = h5py.is_hdf5(path)
    arrays = _hdf5_arrays(path) if hdf5 else _mat_arrays(path)
    key = _choose_key(path, arrays, requested)
    return ArrayRef(path, key, hdf5=hdf5, transpose=hdf5 and path.suffix == ".mat")


def _hdf5_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Every dataset of an HDF5 file: ``{key: (shape, numeric)}``."""
    found: dict[str, tuple[tuple[int, ...], bool]] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = (tuple(obj.shape), np.issubdtype(obj.dtype, np.number))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as exc:
        raise FmrilmError(f"{path}: cannot read as HDF5 ({exc})") from None
    return found


def _mat_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], bool]]:

    try:
        return {name: (tuple(shape), cls in _MAT_NUMERIC) for name, shape, cls in whosmat(path)}
    except Exception as exc:  # scipy raises ValueError/IndexError/... on non-MAT files
        raise FmrilmError(
            f"{path}: cannot read as a MATLAB file ({type(exc).__name__}: {exc})"
        ) from None


def _choose_key(
    path: Path, arrays: dict[str, tuple[tuple[int, ...], bool]], requested: str | None
) -> str:
    matrices = [
        k
        for k, (shape, numeric) in arrays.items()
        if numeric and len(shape) == 2 and min(shape) > 1
    ]
    listing = ", ".join(f"{k} {arrays[k][0]}" for k in list(arrays)[:10]) or "none"
    if requested is not None:
        if requested.strip("/") not in arrays:
            raise FmrilmError(f"--key {requested}: no such array in {path}; it holds: {listing}")
        return requested.strip("/")
    if len(matrices) != 1:
        what = "no 2-D numeric array" if not matrices else f"{len(matrices)} 2-D arrays"
        raise FmrilmError(f"{path}: {what} ({listing}); choose one with --key NAME")
    return matrices[0]


# --------------------------------------------------------------------------------------------
# atlas and TR


def _coordinate_table(options: ImportOptions) -> Atlas | None:
    """The ROI table from ``--roi-table`` (or ``--atlas``: a builtin name or table), if any."""
    if options.roi_table and options.atlas:
        raise FmrilmError("pass either --roi-table or --atlas for ROI files, not both")
    if options.roi_table:
        return Atlas.from_table(options.roi_table)
    if options.atlas:
        return load_atlas(options.atlas, options.atlas_labels)
    return None


def _atlas_for(names: list[str] | None, table: Atlas | None, path: Path) -> Atlas:
    """The ROI table the file's columns follow."""
    if table is None:
        if not names:
            raise FmrilmError(
                f"{path}: the file has no ROI names (no header row); pass --roi-table FILE "
                "(columns name, x, y, z) listing its columns in order"
            )
        try:
            return resolve_roi_names(names, name=subset_name("rois", names))
        except FmrilmError as exc:
            raise FmrilmError(f"{path}: {exc}") from None
    if not names or not set(names) & set(table.names):
        return table  # by position; the column count is checked when the file is read
    missing = [n for n in names if n not in set(table.names)]
    if missing:
        raise FmrilmError(
            f"{path}: header names {missing[:3]} are not in the ROI table {table.name!r} (--roi-table)"
        )
    return present_atlas(table, names)


def _tr(path: Path, dirs: list[Path], options: ImportOptions) -> float:
    if options.tr is not None:
        return float(options.tr)
    tr = sidecar_tr(path, ("timeseries", "bold"), dirs)
    if tr is None:
        raise FmrilmError(
            f"{path}: unknown TR (no JSON sidecar with RepetitionTime); pass --tr SECONDS"
        )
    return tr
