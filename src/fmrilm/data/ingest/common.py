"""Helpers shared by the file-based ingest sources (BIDS, NIfTI, CIFTI, ROI files).

BIDS file names, sidecar lookup (the BIDS inheritance principle), TR, phenotype and events tables,
and naming of atlas subsets live here so that every source reads them the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fmrilm.data.atlas import Atlas
from fmrilm.errors import FmrilmError

if TYPE_CHECKING:
    from fmrilm.data.ingest.base import ImportOptions, RawRun

# Values BIDS tables use for "missing" (participants.tsv, events.tsv, XCP-D time series).
NA_VALUES = ["n/a", "N/A", "NA", "NaN", "nan", ""]
# Entities that describe a derivative (space, resolution, pipeline step), not the acquisition:
# two files that differ only in these are the same run.
DERIVATIVE_ENTITIES = ("space", "res", "den", "desc", "cohort", "seg", "atlas", "stat", "hemi")
# Entities that identify a run in the cohort (scan ids are sub/ses/task/run).
_SCAN_ENTITIES = {"sub": "subject", "ses": "session", "task": "task", "run": "run"}


# --------------------------------------------------------------------------------------------
# BIDS names


def split_name(path: str | Path) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a file name.

    ``sub-01_ses-2_task-rest_run-1_bold.nii.gz`` -> ``({"sub": "01", "ses": "2", "task": "rest",
    "run": "1"}, "bold")``. Parts that are not ``key-value`` are ignored, except the last one,
    which is the suffix (``""`` when the last part is an entity).
    """
    stem = Path(path).name.split(".", 1)[0]
    entities: dict[str, str] = {}
    parts = stem.split("_")
    for part in parts:
        key, sep, value = part.partition("-")
        if sep and key and value:
            entities.setdefault(key, value)
    suffix = parts[-1] if "-" not in parts[-1] else ""
    return entities, suffix


def sanitize(label: str) -> str:
    """Letters and digits only (the characters BIDS labels and fmrilm scan ids allow)."""
    return re.sub(r"[^A-Za-z0-9]", "", str(label))


def subject_id(raw: Any) -> str:
    """A participant id as fmrilm stores it: ``sub-`` prefix removed, letters and digits only."""
    text = str(raw).strip()
    if text.startswith("sub-"):
        text = text[4:]
    return sanitize(text)


def scan_labels(path: Path) -> dict[str, str]:
    """``subject``, ``session``, ``task`` and ``run`` for a data file.

    Taken from the BIDS entities of the name; without a ``sub-`` entity the subject is the file
    stem reduced to letters and digits. The task defaults to ``rest``.
    """
    entities, _ = split_name(path)
    labels = {field: sanitize(entities.get(key, "")) for key, field in _SCAN_ENTITIES.items()}
    if not labels["subject"]:
        labels["subject"] = sanitize(Path(path).name.split(".", 1)[0])
    if not labels["subject"]:
        raise FmrilmError(
            f"{path}: cannot derive a subject id from the file name; rename it (e.g. sub-01_...)"
        )
    labels["task"] = labels["task"] or "rest"
    return labels


def acquisition_key(path: Path) -> tuple[tuple[str, str], ...]:
    """Entities that identify an acquisition: the name without derivative entities and suffix."""
    entities, _ = split_name(path)
    return tuple(sorted((k, v) for k, v in entities.items() if k not in DERIVATIVE_ENTITIES))


def sidecar_dirs(path: Path, root: Path | None, extra_roots: tuple[Path, ...] = ()) -> list[Path]:
    """Folders where BIDS metadata for ``path`` may live, most specific first.

    Under the inheritance principle a sidecar applies to every file below its folder, so the
    search walks from the file's folder up to the dataset root, then repeats the same relative
    folders in ``extra_roots`` (e.g. the raw dataset behind fMRIPrep derivatives).
    """
    if root is None:
        return [path.parent]
    try:
        rel = path.parent.relative_to(root)
    except ValueError:
        return [path.parent]
    levels = [rel, *rel.parents]
    return [base / level for base in (root, *extra_roots) for level in levels]


def find_sidecar(path: Path, suffixes: tuple[str, ...], ext: str, dirs: list[Path]) -> list[Path]:
    """Files ``*_<suffix><ext>`` in ``dirs`` that apply to ``path``, most specific first.

    A file applies when each of its acquisition entities (sub, ses, task, run, ...) equals
    ``path``'s, as in the BIDS inheritance principle; derivative entities (space, desc, ...) do
    not change timing or events and are ignored. Call :func:`forget_listings` when files may
    have been added since the last search.
    """
    entities = dict(acquisition_key(path))
    found: list[Path] = []
    for d in dirs:
        here = [
            (len(ents), c.name, c)
            for c, ents in _candidates(d, suffixes, ext)
            if c != path and all(entities.get(k) == v for k, v in ents)
        ]
        # more entities = more specific (sub-01_task-rest_bold.json beats task-rest_bold.json)
        found.extend(c for _, _, c in sorted(here, key=lambda h: (-h[0], h[1])) if c not in found)
    return found


@functools.lru_cache(maxsize=4096)
def _candidates(
    folder: Path, suffixes: tuple[str, ...], ext: str
) -> tuple[tuple[Path, tuple[tuple[str, str], ...]], ...]:
    """Files of ``folder`` with one of ``suffixes`` and ``ext``, with their acquisition entities.

    Cached: every run of a dataset searches the same dataset-level folders, and a root with
    thousands of ``sub-*`` folders must not be listed once per run.
    """
    if not folder.is_dir():
        return ()
    out = []
    for c in folder.iterdir():
        if c.name.endswith(ext) and split_name(c)[1] in suffixes:
            out.append((c, acquisition_key(c)))
    return tuple(out)


def forget_listings() -> None:
    """Drop cached folder listings (each discovery starts from the current files)."""
    _candidates.cache_clear()


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FmrilmError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FmrilmError(f"{path}: expected a JSON object")
    return data


def json_tr(path: Path) -> float | None:
    """TR in seconds from a sidecar: ``RepetitionTime``, or ``1 / SamplingFrequency``."""
    meta = read_json(path)
    for key, invert in (("RepetitionTime", False), ("SamplingFrequency", True)):
        if key in meta:
            try:
                value = float(meta[key])
            except (TypeError, ValueError):
                raise FmrilmError(f"{path}: {key} must be a number, got {meta[key]!r}") from None
            if not (np.isfinite(value) and value > 0):
                raise FmrilmError(f"{path}: {key} must be positive, got {meta[key]!r}")
            return 1.0 / value if invert else value
    return None


def sidecar_tr(path: Path, suffixes: tuple[str, ...], dirs: list[Path]) -> float | None:
    """TR from the most specific applicable JSON sidecar (same-stem file first), or None."""
    same = path.with_name(path.name.split(".", 1)[0] + ".json")
    candidates = [same] if same.is_file() else []
    candidates += find_sidecar(path, suffixes, ".json", dirs)
    for candidate in candidates:
        tr = json_tr(candidate)
        if tr is not None:
            return tr
    return None


def source_datasets(root: Path) -> tuple[Path, ...]:
    """Local raw datasets a derivatives folder was made from (for events and sidecars).

    Read from ``dataset_description.json`` (``DatasetLinks`` and ``SourceDatasets`` that are
    local paths) and from the usual ``RAW/derivatives/PIPELINE`` layout.
    """
    description = root / "dataset_description.json"
    meta = read_json(description) if description.is_file() else {}
    urls = list((meta.get("DatasetLinks") or {}).values())
    urls += [s.get("URL", "") for s in meta.get("SourceDatasets") or [] if isinstance(s, dict)]
    candidates = []
    for url in urls:
        if not isinstance(url, str) or not url:
            continue
        if url.startswith("file://"):
            candidates.append(Path(url[7:]))
        elif "://" not in url and ":" not in url:
            candidates.append(root / url)
    if root.parent.name == "derivatives":
        candidates.append(root.parent.parent)
    out: list[Path] = []
    for c in candidates:
        c = c.resolve()
        if c != root.resolve() and (c / "dataset_description.json").is_file() and c not in out:
            out.append(c)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# tables


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A TSV/CSV table as strings, BIDS ``n/a`` read as missing."""
    if not path.is_file():
        raise FmrilmError(f"{what} {path} does not exist")
    sep = "\t" if path.suffix == ".tsv" else "," if path.suffix == ".csv" else None
    try:
        return pd.read_csv(
            path,
            sep=sep,
            engine="python" if sep is None else "c",
            dtype=str,
            keep_default_na=False,
            na_values=NA_VALUES,
        )
    except Exception as exc:  # pandas raises many types for malformed text
        raise FmrilmError(f"{what} {path}: cannot parse ({exc})") from None


def read_phenotypes(path: Path) -> dict[str, dict[str, Any]]:
    """Subject-level variables from a ``participants.tsv``-like table.

    Returns ``{subject_id: {column: value}}``: ids come from a ``participant_id`` (or
    ``subject``) column with the ``sub-`` prefix removed; a column whose values all parse as
    numbers becomes float, any other column stays text; missing values (``n/a``) are left out.
    """
    df = read_table(path, "phenotype table")
    columns = {c.strip().lower(): c for c in df.columns}
    id_col = columns.get("participant_id") or columns.get("subject")
    if id_col is None:
        raise FmrilmError(
            f"phenotype table {path}: needs a participant_id (or subject) column; found {list(df.columns)[:8]}"
        )
    ids = df[id_col].map(lambda v: subject_id(v) if isinstance(v, str) else "")
    if (ids == "").any():
        raise FmrilmError(
            f"phenotype table {path}: {int((ids == '').sum())} rows without a participant id"
        )
    dup = sorted(set(ids[ids.duplicated()]))
    if dup:
        raise FmrilmError(f"phenotype table {path}: participant ids listed twice: {dup[:5]}")
    table: dict[str, dict[str, Any]] = {sid: {} for sid in ids}
    for col in df.columns:
        if col == id_col:
            continue
        values = df[col].str.strip()
        numbers = pd.to_numeric(values, errors="coerce")
        numeric = numbers.notna().sum() == values.notna().sum()
        for sid, text, number in zip(ids, values, numbers, strict=True):
            if isinstance(text, str):
                table[sid][str(col).strip()] = float(number) if numeric else text
    return table


def merge_phenotypes(*tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge phenotype tables; later tables win column by column."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        for sid, row in table.items():
            out.setdefault(sid, {}).update(row)
    return out


def phenotype_table(options: ImportOptions, folders: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``participants.tsv`` of the first of ``folders`` that has one, then ``--phenotypes`` on top."""
    table: dict[str, dict[str, Any]] = {}
    for folder in folders:
        if (folder / "participants.tsv").is_file():
            table = read_phenotypes(folder / "participants.tsv")
            break
    if options.phenotypes:
        table = merge_phenotypes(table, read_phenotypes(Path(options.phenotypes)))
    return table


def check_phenotype_match(
    table: dict[str, dict[str, Any]], runs: list[RawRun], options: ImportOptions
) -> None:
    """Refuse a ``--phenotypes`` table that names none of the imported subjects (wrong ids)."""
    subjects = sorted({r.subject for r in runs})
    if options.phenotypes and subjects and not set(table) & set(subjects):
        raise FmrilmError(
            f"phenotype table {options.phenotypes}: none of the {len(subjects)} imported subjects "
            f"(e.g. {subjects[:3]}) appear in it (ids there: {sorted(table)[:3]})"
        )


def run_fields(
    path: Path, dirs: list[Path], phenotypes: dict[str, dict[str, Any]], options: ImportOptions
) -> dict[str, Any]:
    """The :class:`RawRun` fields read from a data file's name and metadata.

    ids from the name (:func:`scan_labels`), site (``--site``, else a ``site`` phenotype),
    events (BIDS inheritance over ``dirs``), the subject's phenotypes, and the file as source.
    """
    labels = scan_labels(path)
    phen, site = subject_fields(phenotypes.get(labels["subject"], {}), options.site)
    events = find_events(path, dirs)
    return {**labels, "site": site, "events": events, "phenotypes": phen, "source": str(path)}


def subject_fields(phenotypes: dict[str, Any], site: str) -> tuple[dict[str, Any], str]:
    """Split a ``site`` column off a subject's phenotypes (``--site`` wins over the table)."""
    rest = dict(phenotypes)
    table_site = rest.pop("site", None)
    if not site and table_site is not None:
        # a numeric site column (1.0, 2.0) is a label, not a quantity
        integral = isinstance(table_site, float) and table_site.is_integer()
        site = str(int(table_site)) if integral else str(table_site)
    return rest, site


def read_events(path: Path) -> pd.DataFrame:
    """A BIDS events table: ``onset``, ``duration`` (s) and ``trial_type`` (``event`` when absent)."""
    df = read_table(path, "events file")
    missing = [c for c in ("onset", "duration") if c not in df.columns]
    if missing:
        raise FmrilmError(f"events file {path}: missing columns {missing}")
    out = pd.DataFrame(
        {
            "onset": pd.to_numeric(df["onset"], errors="coerce"),
            "duration": pd.to_numeric(df["duration"], errors="coerce"),
            "trial_type": df["trial_type"].fillna("n/a") if "trial_type" in df else "event",
        }
    )
    if out["onset"].isna().any():
        raise FmrilmError(f"events file {path}: onset must be numeric in every row")
    # BIDS allows duration n/a (unknown); treat it as an impulse
    out["duration"] = out["duration"].fillna(0.0)
    return out.astype({"trial_type": str})


def find_events(path: Path, dirs: list[Path]) -> pd.DataFrame | None:
    """The ``*_events.tsv`` that applies to ``path`` (BIDS inheritance), or None."""
    found = find_sidecar(path, ("events",), ".tsv", dirs)
    return read_events(found[0]) if found else None


# --------------------------------------------------------------------------------------------
# atlases


def present_atlas(atlas: Atlas, names: list[str]) -> Atlas:
    """``atlas`` restricted to ``names``; a strict subset gets a name of its own.

    The cohort store refuses two different ROI tables under one name, so the subset's name
    encodes its size and a digest of its ROI names: two subsets share a name only when equal.
    """
    if names == atlas.names:
        return atlas
    return atlas.subset(names, name=subset_name(atlas.name, names))


def subset_name(base: str, names: list[str]) -> str:
    """``BASE-N-DIGEST``: a name that differs whenever the ordered ROI names differ."""
    base = re.sub(r"-\d+-[0-9a-f]{6}$", "", base)  # a subset of a subset keeps the first base
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:6]
    return f"{base}-{len(names)}-{digest}"


def drop_empty_rois(
    data: np.ndarray, atlas: Atlas, *, empty: str, what: str
) -> tuple[np.ndarray, Atlas]:
    """Remove ROI columns without any signal and restrict the atlas to the rest.

    ``empty="zero"``: columns exactly 0 in every frame (parcellated images: the region lies
    outside the brain mask or field of view). ``empty="nan"``: columns missing in every frame
    (XCP-D writes ``n/a`` for parcels below its coverage threshold). Partially missing columns
    stay and are refused later as NaN.
    """
    if data.ndim != 2 or data.shape[1] != len(atlas):
        return data, atlas  # shape errors (e.g. a transposed array) are reported by check_series
    dead = np.all(data == 0, axis=0) if empty == "zero" else np.all(np.isnan(data), axis=0)
    if not dead.any():
        return data, atlas
    if dead.all():
        raise FmrilmError(f"{what}: no ROI of atlas {atlas.name!r} has any signal")
    keep = [n for n, d in zip(atlas.names, dead, strict=True) if not d]
    return data[:, ~dead], present_atlas(atlas, keep)
