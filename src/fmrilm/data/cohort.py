"""The on-disk cohort store: a Parquet manifest plus memory-mappable float32 shards.

Layout (``docs/cohort-format.md`` is the reference)::

    COHORT/
      cohort.json          format name + version, cohort id, preprocessing, phenotype types
      manifest.parquet     one row per scan: ids, split, TR, shape, atlas, shard + offset, QC, phenotypes
      events.parquet       task events (scan_id, onset, duration, trial_type), if any
      atlases/NAME.tsv     ROI table of every atlas used (name, x, y, z, network)
      arrays/shard-NNNNNN.f32   raw little-endian float32; each scan C-ordered (time, ROI)

Why this design: scans are appended in large sequential writes (no per-scan files, so 40,000
scans make ~150 shards, not 40,000 inodes), read back through ``np.memmap`` without loading a
whole cohort, and the manifest is a small table every tool can open. Writes are transactional:
a shard is written under a temporary name and renamed when complete, and only then is the
manifest (the single source of truth) atomically replaced. A crash leaves at worst an
unreferenced shard, which the next writer deletes.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.atlas import Atlas
from fmrilm.data.scan import EVENT_COLUMNS, Scan, check_series
from fmrilm.data.splits import check_splits
from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path, read_meta, write_json, write_parquet

FORMAT_NAME = "fmrilm-cohort"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
BASE_COLUMNS = (
    "scan_id",
    "subject",
    "session",
    "run",
    "site",
    "paradigm",
    "task",
    "tr",
    "n_frames",
    "n_rois",
    "atlas",
    "shard",
    "offset",
    "split",
    "source",
    "qc_tsnr",
    "qc_fd_mean",
)
_DTYPE = np.dtype("<f4")
MAX_OPEN_SHARDS = 4
_SHARD_FILE = re.compile(r"\.?shard-\d{6}\.f32(\.tmp)?")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_meta(root: Path) -> dict[str, Any]:
    return read_meta(
        root / "cohort.json",
        FORMAT_NAME,
        FORMAT_VERSION,
        version_key="version",
        missing=f"{root} is not an fmrilm cohort (no cohort.json)",
        wrong_format="{path}: not an fmrilm cohort (format={found!r})",
        wrong_version="{path}: cohort format version {found} is not supported by this fmrilm "
        "(expects {expected})",
    )


class Cohort:
    """Read access to a cohort folder.

    >>> cohort = Cohort("runs/hcp")                      # doctest: +SKIP
    >>> x = cohort.series("sub-100206_task-rest")        # (n_frames, n_rois) memory-mapped
    >>> train = cohort.manifest.query("split == 'train'")
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FmrilmError(f"cohort folder {self.root} does not exist")
        self.meta = _read_meta(self.root)
        path = self.root / "manifest.parquet"
        try:
            self.manifest = pd.read_parquet(path)
        except FileNotFoundError:
            raise FmrilmError(f"{self.root}: cohort has no manifest.parquet") from None
        except Exception as exc:
            raise FmrilmError(f"{path}: cannot read ({exc})") from None
        self._index = {sid: i for i, sid in enumerate(self.manifest["scan_id"])}
        # a few shards stay mapped (LRU): mapped pages count towards RSS until unmapped, so a
        # full pass over a large cohort would otherwise look like it holds the whole cohort
        self._shards: OrderedDict[str, np.memmap] = OrderedDict()
        self._atlases: dict[str, Atlas] = {}
        self._events: pd.DataFrame | None = None

    # -- metadata ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def __repr__(self) -> str:
        return f"Cohort({str(self.root)!r}, scans={len(self)}, subjects={self.manifest['subject'].nunique()})"

    @property
    def scan_ids(self) -> list[str]:
        return self.manifest["scan_id"].tolist()

    @property
    def phenotype_columns(self) -> list[str]:
        return list(self.meta.get("phenotypes", {}))

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.meta.get("preprocessing", {}))

    def atlas(self, name: str) -> Atlas:
        if name not in self._atlases:
            path = self.root / "atlases" / f"{name}.tsv"
            if not path.is_file():
                raise FmrilmError(f"{self.root}: atlas {name!r} has no ROI table at {path}")
            self._atlases[name] = Atlas.from_table(path, name=name)
        return self._atlases[name]

    def row(self, key: str | int) -> pd.Series:
        if isinstance(key, (int, np.integer)):
            return self.manifest.iloc[int(key)]
        try:
            return self.manifest.iloc[self._index[key]]
        except KeyError:
            raise FmrilmError(f"{self.root}: no scan with id {key!r}") from None

    # -- data ----------------------------------------------------------------------------
    def series(self, key: str | int) -> np.ndarray:
        """ROI time series of one scan, shape (n_frames, n_rois), a read-only memory map."""
        row = self.row(key)
        shard = row["shard"]
        if shard in self._shards:
            self._shards.move_to_end(shard)
        else:
            if len(self._shards) >= MAX_OPEN_SHARDS:
                self._shards.popitem(last=False)
            path = self.root / "arrays" / shard
            try:
                self._shards[shard] = np.memmap(path, dtype=_DTYPE, mode="r")
            except FileNotFoundError:
                raise FmrilmError(
                    f"{self.root}: shard {shard} referenced by the manifest is missing"
                ) from None
            except ValueError as exc:  # numpy refuses an empty file or a size not a multiple of 4
                raise FmrilmError(
                    f"{self.root}: shard {shard} is truncated or corrupt ({exc})"
                ) from None
        t, r, off = int(row["n_frames"]), int(row["n_rois"]), int(row["offset"])
        flat = self._shards[shard]
        if off + t * r > flat.size:
            raise FmrilmError(f"{self.root}: shard {shard} is truncated (scan {row['scan_id']})")
        return flat[off : off + t * r].reshape(t, r)

    def events(self, scan_id: str) -> pd.DataFrame | None:
        if self._events is None:
            path = self.root / "events.parquet"
            self._events = (
                pd.read_parquet(path)
                if path.exists()
                else pd.DataFrame(columns=["scan_id", *EVENT_COLUMNS])
            )
        ev = self._events[self._events["scan_id"] == scan_id]
        return None if ev.empty else ev[list(EVENT_COLUMNS)].reset_index(drop=True)

    def scan(self, key: str | int) -> Scan:
        row = self.row(key)
        phen = {c: _py(row[c]) for c in self.phenotype_columns if c in row and not _isna(row[c])}
        qc = {k[3:]: float(row[k]) for k in ("qc_tsnr", "qc_fd_mean") if not _isna(row[k])}
        return Scan(
            data=np.array(self.series(key)),
            tr=float(row["tr"]),
            subject=row["subject"],
            session=row["session"],
            run=row["run"],
            site=row["site"],
            paradigm=row["paradigm"],
            task=row["task"],
            events=self.events(row["scan_id"]),
            phenotypes=phen,
            atlas=row["atlas"],
            qc=qc,
            source=row["source"],
        )

    def __iter__(self) -> Iterator[Scan]:
        for i in range(len(self)):
            yield self.scan(i)

    def split(self, name: str) -> pd.DataFrame:
        """Manifest rows of one split (checked for subject leakage first)."""
        if name not in SPLITS:
            raise FmrilmError(f"split must be one of {SPLITS}, got {name!r}")
        check_splits(self.manifest)
        rows = self.manifest[self.manifest["split"] == name]
        if rows.empty:
            raise FmrilmError(f"{self.root}: the {name!r} split is empty")
        return rows

    def set_splits(self, splits: pd.Series) -> None:
        """Store a split per scan (a Series indexed like the manifest) atomically."""
        manifest = self.manifest.copy()
        manifest["split"] = splits.reindex(manifest.index).fillna("").astype(str).to_numpy()
        check_splits(manifest)
        write_parquet(self.root / "manifest.parquet", manifest)
        self.manifest = manifest

    def summary(self) -> dict[str, Any]:
        """What ``fmrilm data info`` prints."""
        m = self.manifest
        labels = {}
        for col in self.phenotype_columns:
            values = m.drop_duplicates("subject")[col].dropna()
            if self.meta["phenotypes"][col] == "numeric":
                v = pd.to_numeric(values)
                labels[col] = {
                    "type": "numeric",
                    "n": int(v.size),
                    "mean": round(float(v.mean()), 3) if v.size else None,
                    "std": round(float(v.std()), 3) if v.size > 1 else None,
                    "min": _py(v.min()) if v.size else None,
                    "max": _py(v.max()) if v.size else None,
                }
            else:
                labels[col] = {
                    "type": "categorical",
                    "counts": values.astype(str).value_counts().to_dict(),
                }
        return {
            "path": str(self.root),
            "cohort_id": self.meta["cohort_id"],
            "subjects": int(m["subject"].nunique()),
            "scans": len(m),
            "sites": sorted(m["site"].unique().tolist()),
            "atlases": {a: int(n) for a, n in m.groupby("atlas")["n_rois"].first().items()},
            "tr_seconds": sorted(float(t) for t in m["tr"].unique()),
            "frames": {
                "min": int(m["n_frames"].min()),
                "median": float(m["n_frames"].median()),
                "max": int(m["n_frames"].max()),
            },
            "paradigms": m.groupby(["paradigm", "task"])
            .size()
            .rename("scans")
            .reset_index()
            .to_dict("records"),
            "splits": {
                s: {"subjects": int(g["subject"].nunique()), "scans": len(g)}
                for s, g in m.groupby("split")
            },
            "labels": labels,
            "preprocessing": self.preprocessing,
            "size_gb": round(float((m["n_frames"] * m["n_rois"]).sum()) * 4 / 1e9, 3),
        }


class CohortWriter:
    """Append scans to a cohort folder, transactionally.

    Parameters
    ----------
    root : path
        Cohort folder; created if absent.
    preprocessing : dict
        Settings the scans were processed with. Appending to a cohort processed differently is
        refused: it would mix incomparable data.
    mode : {"create", "append", "resume"}
        ``create`` refuses a folder that already holds a cohort; ``append`` adds scans and refuses
        duplicate scan ids; ``resume`` silently skips scan ids already stored (re-running an
        interrupted import).
    shard_mb : float
        Size at which a shard is closed and committed (bounds memory and the work lost on a crash).

    Use as a context manager; leaving the block normally commits, an exception discards the
    uncommitted scans (earlier commits stay valid).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        preprocessing: dict[str, Any],
        mode: str = "create",
        description: str = "",
        shard_mb: float = 256.0,
    ):
        if mode not in ("create", "append", "resume"):
            raise ValueError(f"mode must be create, append or resume, got {mode!r}")
        self.root = Path(root)
        self.mode = mode
        self.shard_bytes = int(shard_mb * 2**20)
        self.preprocessing = json.loads(json.dumps(preprocessing))  # plain JSON types
        if (self.root / "cohort.json").exists():
            self._open_existing()
        else:
            self._start_new(description)
        (self.root / "arrays").mkdir(parents=True, exist_ok=True)
        (self.root / "atlases").mkdir(parents=True, exist_ok=True)
        self._clean_orphans()
        self._known_ids = set(self.manifest["scan_id"])
        self._atlas_sizes = {
            a: int(n) for a, n in self.manifest.groupby("atlas")["n_rois"].first().items()
        }
        self._rows: list[dict[str, Any]] = []
        self._new_events: list[pd.DataFrame] = []
        self._fh = None
        self._shard_name = ""
        self._shard_tmp: Path | None = None
        self._offset = 0
        self.n_added = 0
        self.n_skipped = 0

    def _open_existing(self) -> None:
        """Append to (or resume) the cohort at ``root``: same preprocessing, committed rows."""
        if self.mode == "create":
            n = (
                len(pd.read_parquet(self.root / "manifest.parquet"))
                if (self.root / "manifest.parquet").exists()
                else 0
            )
            raise FmrilmError(
                f"{self.root} already holds a cohort ({n} scans); choose another --out, or "
                "extend it with 'data import --append' (or '--resume' after an interruption)"
            )
        self.meta = _read_meta(self.root)
        if self.meta.get("preprocessing") != self.preprocessing:
            raise FmrilmError(
                f"{self.root} holds a different cohort: it was preprocessed with "
                f"{_diff(self.meta.get('preprocessing', {}), self.preprocessing)}; append only data "
                "processed the same way, or write to another --out"
            )
        path = self.root / "manifest.parquet"
        # no manifest: the first commit crashed after cohort.json, so nothing was committed
        self.manifest = (
            pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=list(BASE_COLUMNS))
        )
        ev = self.root / "events.parquet"
        self.events = pd.read_parquet(ev) if ev.exists() else None
        if self.events is not None:  # drop events of scans whose commit never reached the manifest
            self.events = self.events[self.events["scan_id"].isin(self.manifest["scan_id"])]

    def _start_new(self, description: str) -> None:
        """A new cohort in an empty (or missing) ``root``."""
        if self.root.exists() and any(
            p
            for p in self.root.iterdir()
            if not p.name.startswith(".") and not _is_uncommitted_skeleton(p)
        ):
            raise FmrilmError(
                f"{self.root} is not empty and holds no cohort; choose an empty or new --out"
            )
        self.meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "cohort_id": uuid.uuid4().hex,
            "created": _now(),
            "description": description,
            "preprocessing": self.preprocessing,
            "phenotypes": {},
            "sources": [],
        }
        self.manifest = pd.DataFrame(columns=list(BASE_COLUMNS))
        self.events = None

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    # -- public --------------------------------------------------------------------------
    def add_atlas(self, atlas: Atlas) -> None:
        """Store an atlas's ROI table (refuses a different table under the same name)."""
        path = self.root / "atlases" / f"{atlas.name}.tsv"
        if path.exists():
            stored = Atlas.from_table(path, name=atlas.name)
            same = stored.names == atlas.names and np.allclose(
                stored.coords, atlas.coords, atol=1e-3
            )
            if not same:
                raise FmrilmError(
                    f"{self.root} already has an atlas named {atlas.name!r} with different ROIs; "
                    "rename the atlas or use another --out"
                )
        else:
            atlas.to_tsv(path)
        # also when the table exists: it may come from a writer that crashed before committing scans
        self._atlas_sizes.setdefault(atlas.name, len(atlas))

    def has(self, scan_id: str) -> bool:
        return scan_id in self._known_ids

    def add(self, scan: Scan) -> bool:
        """Queue one scan; returns False when skipped (``resume`` mode, id already stored)."""
        sid = scan.scan_id
        if sid in self._known_ids:
            if self.mode == "resume":
                self.n_skipped += 1
                return False
            raise FmrilmError(
                f"duplicate scan id {sid}: {self.root} already holds it (use --resume to skip stored scans)"
            )
        if scan.tr is None:
            raise FmrilmError(f"scan {sid}: unknown TR; pass --tr SECONDS")
        if scan.atlas not in self._atlas_sizes:
            raise FmrilmError(f"scan {sid}: atlas {scan.atlas!r} was not added to the cohort")
        data = check_series(scan.data, what=f"scan {sid}", n_rois=self._atlas_sizes[scan.atlas])
        self._write_array(data)
        row = {
            "scan_id": sid,
            "subject": scan.subject,
            "session": scan.session,
            "run": scan.run,
            "site": scan.site,
            "paradigm": scan.paradigm,
            "task": scan.task,
            "tr": float(scan.tr),
            "n_frames": scan.n_frames,
            "n_rois": scan.n_rois,
            "atlas": scan.atlas,
            "shard": self._shard_name,
            "offset": self._offset,
            "split": "",
            "source": scan.source,
            "qc_tsnr": float(scan.qc.get("tsnr", np.nan)),
            "qc_fd_mean": float(scan.qc.get("fd_mean", np.nan)),
        }
        for key, value in scan.phenotypes.items():
            col = key if key not in BASE_COLUMNS else f"pheno_{key}"
            row[col] = value
        self._offset += data.size
        self._rows.append(row)
        if scan.events is not None and not scan.events.empty:
            ev = scan.events[list(EVENT_COLUMNS)].copy()
            ev.insert(0, "scan_id", sid)
            self._new_events.append(ev)
        self._known_ids.add(sid)
        self.n_added += 1
        if self._offset * _DTYPE.itemsize >= self.shard_bytes:
            self.commit()
        return True

    def add_source(self, description: str) -> None:
        self.meta["sources"].append({"source": description, "added": _now()})

    def commit(self) -> None:
        """Close the open shard and publish its scans in the manifest (atomic)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            self._shard_tmp.rename(self.root / "arrays" / self._shard_name)
        if not self._rows and (self.root / "cohort.json").exists():
            return
        new = pd.DataFrame(self._rows) if self._rows else pd.DataFrame(columns=list(BASE_COLUMNS))
        for col in new.columns:
            if col in BASE_COLUMNS:
                continue
            kind = (
                "numeric"
                if pd.api.types.is_numeric_dtype(new[col].dropna().infer_objects())
                else "categorical"
            )
            previous = self.meta["phenotypes"].get(col)
            if previous == "numeric" and kind == "categorical":
                raise FmrilmError(
                    f"phenotype {col!r} is numeric in the cohort but not in the new scans"
                )
            self.meta["phenotypes"].setdefault(col, kind)
        manifest = pd.concat([self.manifest, new], ignore_index=True) if len(self.manifest) else new
        manifest = _normalise_manifest(manifest, self.meta["phenotypes"])
        if self._new_events:
            events = pd.concat(
                [e for e in [self.events, *self._new_events] if e is not None], ignore_index=True
            )
            write_parquet(self.root / "events.parquet", events)
            self.events = events
        self.meta["updated"] = _now()
        self.meta["n_scans"] = len(manifest)
        # order matters: cohort.json first (phenotype types), manifest last -- the manifest is the
        # commit point, and readers never see rows whose shard is not yet complete.
        write_json(self.root / "cohort.json", self.meta)
        write_parquet(self.root / "manifest.parquet", manifest)
        self.manifest = manifest
        self._rows, self._new_events = [], []

    def discard(self) -> None:
        """Drop uncommitted scans (the open shard and pending rows)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._shard_tmp.unlink(missing_ok=True)
        for row in self._rows:
            self._known_ids.discard(row["scan_id"])
        self.n_added -= len(self._rows)
        self._rows, self._new_events = [], []

    # -- internals -----------------------------------------------------------------------
    def _write_array(self, data: np.ndarray) -> None:
        if self._fh is None:
            taken = set(self.manifest["shard"]) | {
                p.name for p in (self.root / "arrays").glob("shard-*.f32")
            }
            n = 0
            while f"shard-{n:06d}.f32" in taken:
                n += 1
            self._shard_name = f"shard-{n:06d}.f32"
            self._shard_tmp = self.root / "arrays" / f".{self._shard_name}.tmp"
            self._fh = open(self._shard_tmp, "wb")  # noqa: SIM115 -- closed in commit/discard
            self._offset = 0
        self._fh.write(np.ascontiguousarray(data, dtype=_DTYPE).tobytes())

    def _clean_orphans(self) -> None:
        referenced = set(self.manifest["shard"])
        for p in (self.root / "arrays").iterdir():
            if p.name.endswith(".tmp") or (p.suffix == ".f32" and p.name not in referenced):
                p.unlink()
        for p in self.root.glob(".*.tmp"):
            p.unlink()


_INT_COLUMNS = ("n_frames", "n_rois", "offset")
_FLOAT_COLUMNS = ("tr", "qc_tsnr", "qc_fd_mean")


def _normalise_manifest(m: pd.DataFrame, phenotypes: dict[str, str]) -> pd.DataFrame:
    """Fix column dtypes: base columns as documented, phenotypes by their recorded type."""
    for col in BASE_COLUMNS:
        if col in _INT_COLUMNS:
            m[col] = m[col].astype(np.int64)
        elif col in _FLOAT_COLUMNS:
            m[col] = m[col].astype(np.float64)
        else:
            m[col] = m[col].fillna("").astype(str)
    for col, kind in phenotypes.items():
        if kind == "numeric":
            m[col] = pd.to_numeric(m[col], errors="coerce").astype(np.float64)
        else:
            m[col] = m[col].astype(object).where(m[col].notna(), None)
            m[col] = m[col].map(lambda v: None if v is None else str(v))
    return m


def _is_uncommitted_skeleton(path: Path) -> bool:
    """``arrays/`` or ``atlases/`` as a writer leaves them when it dies before its first commit."""
    if path.name == "arrays" and path.is_dir():
        return all(_SHARD_FILE.fullmatch(p.name) for p in path.iterdir())
    if path.name == "atlases" and path.is_dir():
        return all(p.suffix in (".tsv", ".tmp") for p in path.iterdir())
    return False


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}={a.get(k)!r} (this import: {b.get(k)!r})" for k in keys if a.get(k) != b.get(k)]
    return ", ".join(parts) or "other settings"


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


__all__ = ["Cohort", "CohortWriter", "SPLITS", "atomic_path"]


def format_summary(s: dict) -> str:
    """:meth:`Cohort.summary` as the aligned text block ``fmrilm data info`` prints."""
    lines = [
        f"cohort     {s['path']}  ({s['size_gb']} GB float32)",
        f"subjects   {s['subjects']}    scans {s['scans']}    sites {', '.join(s['sites']) or '-'}",
        "atlases    " + ", ".join(f"{a} ({n} ROIs)" for a, n in s["atlases"].items()),
        "TR (s)     " + ", ".join(f"{t:g}" for t in s["tr_seconds"]),
        f"frames     min {s['frames']['min']}  median {s['frames']['median']:g}  max {s['frames']['max']}",
        "paradigms  "
        + ", ".join(f"{p['task']} ({p['paradigm']}): {p['scans']}" for p in s["paradigms"]),
        "splits     "
        + (
            ", ".join(
                f"{k or 'unassigned'}: {v['subjects']} subj / {v['scans']} scans"
                for k, v in s["splits"].items()
            )
            or "-"
        ),
    ]
    if s["labels"]:
        lines.append("labels")
        for name, lab in s["labels"].items():
            if lab["type"] == "numeric":
                lines.append(
                    f"  {name:<20} numeric  n={lab['n']} mean={lab['mean']} sd={lab['std']} range=[{lab['min']}, {lab['max']}]"
                )
            else:
                counts = ", ".join(f"{k}: {v}" for k, v in list(lab["counts"].items())[:8])
                lines.append(f"  {name:<20} {counts}")
    pre = s["preprocessing"]
    lines.append("preprocess " + ", ".join(f"{k}={v}" for k, v in pre.items()))
    return "\n".join(lines)
