"""Cross-atlas test set: a simulated cohort's scans re-parcellated with AAL3 through NIfTI import.

A tokenizer trained on simulated ``aal2-cortex80`` scans (``fmrilm data simulate``) is compared
in-atlas and cross-atlas on the *same activity*: every scan of one split of SIM_COHORT is painted
into a 4-D MNI volume (:func:`fmrilm.data.volume.render_volume`; 3 mm grid, each AAL3 region that
has an AAL2 counterpart carries that ROI's series plus Gaussian voxel noise of ``--noise`` x its
std, the other AAL3 regions pure unit noise) and the volumes are imported into OUT_COHORT with
the AAL3 atlas by fmrilm's importer -- the code path of ``fmrilm data import DIR --atlas aal3``
(:func:`fmrilm.data.ingest.import_source`: BIDS discovery, ``NiftiLabelsMasker`` parcellation,
preprocessing, cohort store).

The volumes are written as a raw BIDS dataset in a temporary folder (``--volumes DIR`` keeps it):
``sub-S[/ses-X]/func/<scan id>_bold.nii`` (``.nii.gz`` with ``--compress``) with a ``_bold.json`` sidecar (``RepetitionTime``; the
header carries the TR too), the scan's ``_events.tsv``, and ``participants.tsv`` with the
source's site and phenotypes. Subject, session, task and run therefore come back from the file
names, so OUT_COHORT's scan ids, subjects, sites, TRs, events and phenotypes equal the source's.

What the importer does to the series (so what OUT_COHORT holds): mean over the voxels of each AAL3
label on the 3 mm grid (labels that vanish at 3 mm -- ``Thal_Re_L/R`` -- are dropped, so the
scans' atlas is the subset ``aal3-164-<digest>``), then the *source cohort's* preprocessing
settings (read from its ``cohort.json``; simulate's defaults: linear detrend, 0.008 Hz Butterworth
high-pass, robust scaling per ROI; ``target_tr`` resampling if the source used it). The source
series were already preprocessed that way, so re-filtering changes little. The split is not
re-drawn: every scan keeps its source split (``--split``, default ``test``). The painted signal has
mean ~0, so the manifest's ``qc_tsnr`` of OUT_COHORT is meaningless (about 0); ``qc_fd_mean`` is
empty (no confounds file).

OUT_COHORT/crossatlas.json records, for every AAL3 region, the source ROI it carries (or null;
:func:`fmrilm.data.volume.aal3_correspondence`), which AAL3 regions the import dropped, the scan
ids (identical to the source's), and the rendering settings, so a benchmark can restrict scores
to regions with a counterpart.

    python benchmarks/crossatlas_cohort.py --cohort runs/sim --out runs/sim_aal3
    python benchmarks/crossatlas_cohort.py --cohort runs/sim --out runs/sim_aal3 --max-scans 8 --jobs 2

Prints one JSON object: scans, seconds (render, import, total), scans/s, bytes of volumes written,
the importer's report and the fidelity check (correlation between each imported AAL3 region with
a counterpart and its source ROI, per scan, after import).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from _common import write_result

VOLUME_BYTES = 4  # float32


def render_scan(
    cohort_root: str,
    scan_id: str,
    func_dir: str,
    voxel_size: float,
    noise: float,
    seed: int,
    compress: bool = False,
) -> tuple[str, int]:
    """Paint one source scan into ``func_dir/<scan id>_bold.nii[.gz]`` (+ sidecar, events)."""
    import nibabel as nib

    from fmrilm.data.cohort import Cohort
    from fmrilm.data.volume import render_volume

    cohort = Cohort(cohort_root)
    row = cohort.row(scan_id)
    names = cohort.atlas(row["atlas"]).names
    # a seed per scan that does not depend on which other scans are rendered
    scan_seed = np.random.SeedSequence([seed, zlib.crc32(scan_id.encode())])
    img = render_volume(
        np.asarray(cohort.series(scan_id)),
        names,
        float(row["tr"]),
        voxel_size=voxel_size,
        noise=noise,
        seed=int(scan_seed.generate_state(1)[0]),
    )
    out = Path(func_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{scan_id}_bold.nii{'.gz' if compress else ''}"
    nib.save(img, path)
    (out / f"{scan_id}_bold.json").write_text(json.dumps({"RepetitionTime": float(row["tr"])}))
    events = cohort.events(scan_id)
    if events is not None:
        events.to_csv(out / f"{scan_id}_events.tsv", sep="\t", index=False, na_rep="n/a")
    return str(path), path.stat().st_size


def write_dataset(cohort, rows: pd.DataFrame, root: Path) -> None:
    """``dataset_description.json`` and ``participants.tsv`` (site + the source's phenotypes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": f"crossatlas render of {cohort.root}", "BIDSVersion": "1.8.0"})
    )
    columns = ["site", *[c for c in cohort.phenotype_columns if c in rows.columns]]
    subjects = rows.drop_duplicates("subject").set_index("subject")[columns]
    subjects.index = "sub-" + subjects.index.astype(str)
    subjects.index.name = "participant_id"
    subjects.to_csv(root / "participants.tsv", sep="\t", na_rep="n/a")


def func_dir(root: Path, row: pd.Series) -> Path:
    parts = [f"sub-{row['subject']}"]
    if row["session"]:
        parts.append(f"ses-{row['session']}")
    return root.joinpath(*parts, "func")


def fidelity(source, out, mapping: dict[str, str | None]) -> dict[str, float]:
    """How much of the source activity the AAL3 re-import holds, per (scan, AAL3 region).

    ``*_r``: correlation of each imported region with a counterpart with its source ROI;
    ``uncovered_max_abs_r``: for each region without one, its largest |correlation| with any
    source ROI (chance level for pure noise; median and maximum over regions and scans).
    """
    rs: list[float] = []
    leak: list[float] = []
    for scan_id in out.scan_ids:
        y = np.asarray(out.series(scan_id), dtype=np.float64)
        x = np.asarray(source.series(scan_id), dtype=np.float64)
        if x.shape[0] != y.shape[0]:
            continue  # resampled to another length: not comparable frame by frame
        src_names = source.atlas(source.row(scan_id)["atlas"]).names
        names = out.atlas(out.row(scan_id)["atlas"]).names
        r = np.corrcoef(y.T, x.T)[: len(names), len(names) :]  # (AAL3 regions, source ROIs)
        for j, name in enumerate(names):
            if mapping.get(name) is None:
                leak.append(float(np.abs(r[j]).max()))
            else:
                rs.append(float(r[j, src_names.index(mapping[name])]))
    if not rs:
        return {}
    r = np.array(rs)
    out_ = {
        "pairs": int(r.size),
        "median_r": round(float(np.median(r)), 4),
        "p05_r": round(float(np.percentile(r, 5)), 4),
        "min_r": round(float(r.min()), 4),
    }
    if leak:
        out_["uncovered_max_abs_r"] = {
            "median": round(float(np.median(leak)), 4),
            "max": round(float(np.max(leak)), 4),
        }
    return out_


def run(args: argparse.Namespace) -> dict:
    from joblib import Parallel, delayed

    from fmrilm.data.cohort import Cohort
    from fmrilm.data.ingest import ImportOptions, import_source
    from fmrilm.data.preprocess import PreprocessConfig
    from fmrilm.data.volume import aal3_correspondence, volume_grid
    from fmrilm.errors import FmrilmError
    from fmrilm.io import write_json

    if args.jobs < 1:
        raise FmrilmError(f"--jobs must be at least 1, got {args.jobs}")
    if args.max_scans is not None and args.max_scans < 1:
        raise FmrilmError(f"--max-scans must be at least 1, got {args.max_scans}")
    t_start = time.perf_counter()
    source = Cohort(args.cohort)
    rows = source.split(args.split)
    if args.max_scans is not None:
        rows = rows.iloc[: args.max_scans]
    atlases = sorted(rows["atlas"].unique())
    if len(atlases) != 1:
        raise FmrilmError(
            f"{args.cohort}: the {args.split} scans use several atlases {atlases}; "
            "render one atlas at a time"
        )
    source_names = source.atlas(atlases[0]).names
    mapping = aal3_correspondence(source_names)
    if not any(mapping.values()):
        raise FmrilmError(
            f"{args.cohort}: atlas {atlases[0]} has no AAL2/AAL3 region names; cannot render it"
        )
    if (Path(args.out) / "cohort.json").exists():
        raise FmrilmError(f"{args.out} already holds a cohort; choose another --out")

    shape, _ = volume_grid(args.voxel_size)
    need = int(np.prod(shape)) * int(rows["n_frames"].sum()) * VOLUME_BYTES
    if args.compress:
        need //= 3  # noise compresses poorly, the empty voxels outside the brain very well
    parent = Path(args.volumes) if args.volumes else Path(args.tmp_dir or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if need > 0.9 * free:
        raise FmrilmError(
            f"not enough disk in {parent}: the volumes need {need / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free; pass --max-scans, a larger --voxel-size or --tmp-dir"
        )

    tmp = None
    if args.volumes:
        root = Path(args.volumes)
        if any(root.iterdir()):
            raise FmrilmError(f"--volumes {root} is not empty")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="crossatlas-", dir=parent)
        root = Path(tmp.name)
    try:
        write_dataset(source, rows, root)
        t0 = time.perf_counter()
        written = Parallel(n_jobs=args.jobs)(
            delayed(render_scan)(
                str(source.root),
                row["scan_id"],
                str(func_dir(root, row)),
                args.voxel_size,
                args.noise,
                args.seed,
                args.compress,
            )
            for _, row in rows.iterrows()
        )
        render_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = import_source(
            str(root),
            args.out,
            options=ImportOptions(atlas="aal3"),
            config=PreprocessConfig.from_dict(source.preprocessing),
            jobs=args.jobs,
            progress=False,
        )
        import_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()

    out = Cohort(args.out)
    missing = sorted(set(rows["scan_id"]) - set(out.scan_ids))
    extra = sorted(set(out.scan_ids) - set(rows["scan_id"]))
    if missing or extra:
        raise FmrilmError(
            f"imported scan ids differ from the source's: missing {missing[:3]}, extra {extra[:3]}"
        )
    split = rows.set_index("scan_id")["split"]
    out.set_splits(pd.Series(out.manifest["scan_id"].map(split).to_numpy(), out.manifest.index))
    present = sorted({n for a in out.manifest["atlas"].unique() for n in out.atlas(a).names})
    write_json(
        Path(args.out) / "crossatlas.json",
        {
            "source_cohort": str(Path(args.cohort).resolve()),
            "source_cohort_id": source.meta.get("cohort_id"),
            "source_atlas": atlases[0],
            "split": args.split,
            "render": {
                "voxel_size_mm": args.voxel_size,
                "grid_shape": list(shape),
                "noise": args.noise,
                "seed": args.seed,
            },
            "preprocessing": source.preprocessing,
            "correspondence": mapping,
            "imported_atlases": sorted(out.manifest["atlas"].unique()),
            "dropped_rois": [n for n in mapping if n not in present],
            "source_scan_ids": rows["scan_id"].tolist(),
        },
    )
    total = time.perf_counter() - t_start
    n = len(rows)
    return {
        "source": str(args.cohort),
        "out": str(args.out),
        "split": args.split,
        "scans": n,
        "frames": int(rows["n_frames"].sum()),
        "grid_shape": list(shape),
        "volume_gb_written": round(sum(size for _, size in written) / 1e9, 3),
        "rois_with_counterpart": sum(v is not None for v in mapping.values()),
        "rois_imported": len(present),
        "seconds": {
            "render": round(render_s, 2),
            "import": round(import_s, 2),
            "total": round(total, 2),
        },
        "scans_per_s": round(n / total, 3),
        "import_scans_per_s": round(n / import_s, 3),
        "jobs": args.jobs,
        "fidelity": fidelity(source, out, mapping),
        "import_report": report,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cohort", required=True, help="simulated (or any AAL2/AAL3-named) cohort")
    p.add_argument("--out", required=True, help="new cohort folder for the AAL3 re-import")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--max-scans", type=int, help="first N scans of the split (manifest order)")
    p.add_argument("--jobs", type=int, default=2, help="processes for rendering and import")
    p.add_argument("--noise", type=float, default=0.5, help="voxel noise / ROI signal std")
    p.add_argument("--voxel-size", type=float, default=3.0, help="mm (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp-dir", help="where the temporary volumes go (default: system temp)")
    p.add_argument("--volumes", help="keep the rendered BIDS dataset in this (empty) folder")
    p.add_argument(
        "--compress", action="store_true", help="write .nii.gz (about 5x less disk, slower)"
    )
    p.add_argument("--json", type=Path, help="also write the result (JSON) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from fmrilm.errors import FmrilmError

    args = parse_args(argv)
    try:
        result = run(args)
    except FmrilmError as exc:
        print(f"crossatlas_cohort: error: {exc}", file=sys.stderr)
        return 2
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
