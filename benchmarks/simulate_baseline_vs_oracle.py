"""Data-layer benchmark: import/simulate throughput and FC+linear baseline vs oracle.

Prints one JSON object. What it measures, on the machine it runs on:

* ``import_hcp``: ``fmrilm data import builtin:hcp`` (7 real HCP runs, 80 ROIs x 1200 frames);
* ``import_nifti``: BIDS/NIfTI import with AAL3 parcellation (nilearn masker) of synthetic
  3 mm MNI images (``--nifti-scans`` images of 300 frames, noise inside the MNI brain mask);
* ``simulate_timing``: ``fmrilm data simulate`` with ``--timing-subjects`` subjects (default 200,
  rest + 3 task runs each) -- the issue's target is under 60 s on 2 cores;
* ``labels``: on a larger simulated cohort (``--subjects``, default 1000), for every label the
  majority baseline, FC + logistic/ridge regression (nested CV in the training split) and the
  oracle (Bayes-optimal from the true latent parameters), all on the same subject-disjoint test
  split, each metric as [value, 95 % bootstrap CI low, high];
* ``task_decoding``: which task a task run is, FC + logistic regression vs an oracle
  likelihood-ratio test that knows the designs and each subject's true covariance.

Usage::

    python benchmarks/simulate_baseline_vs_oracle.py [--subjects 1000] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb, write_result


def peak_rss() -> dict[str, float]:
    """Peak RSS so far (MiB) of this process and of the largest joblib worker."""
    return {"main_mb": peak_rss_mb(), "largest_worker_mb": peak_rss_mb(children=True)}


def make_nifti(path: Path, n_frames: int, seed: int) -> None:
    """A 3 mm MNI-space 4-D image: independent noise (mean 1000) in every brain voxel."""
    import nibabel as nib
    import numpy as np
    from nilearn.datasets import load_mni152_brain_mask

    mask = load_mni152_brain_mask(resolution=3)
    inside = np.asarray(mask.dataobj) > 0
    rng = np.random.default_rng(seed)
    data = np.zeros((*inside.shape, n_frames), dtype=np.float32)
    data[inside] = 1000 + 10 * rng.standard_normal((int(inside.sum()), n_frames), dtype=np.float32)
    img = nib.Nifti1Image(data, mask.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=1000)
    p.add_argument("--timing-subjects", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="default")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--nifti-scans", type=int, default=8)
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)

    from fmrilm.data.cohort import Cohort
    from fmrilm.data.ingest import import_source
    from fmrilm.data.simulate import SimulationConfig, simulate_cohort
    from fmrilm.data.splits import assign_splits
    from fmrilm.evaluation.baselines import (
        fc_features,
        fc_linear_baseline,
        majority_baseline,
        subject_table,
    )
    from fmrilm.evaluation.metrics import score
    from fmrilm.evaluation.oracle import oracle_scores, task_oracle

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "args": vars(args) | {"json": str(args.json)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        rep = import_source("builtin:hcp", tmp / "hcp", progress=False)
        dt = time.perf_counter() - t
        result["import_hcp"] = {
            "scans": rep["added"],
            "seconds": round(dt, 2),
            "scans_per_s": round(rep["added"] / dt, 2),
            "peak_rss_so_far": peak_rss(),
        }

        bids = tmp / "bids"
        for i in range(args.nifti_scans):
            func = bids / f"sub-{i + 1:02d}" / "func"
            func.mkdir(parents=True)
            make_nifti(func / f"sub-{i + 1:02d}_task-rest_bold.nii.gz", 300, i)
        (bids / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.8.0"}')
        t = time.perf_counter()
        added = import_source(str(bids), tmp / "nifti_cohort", jobs=args.jobs, progress=False)[
            "added"
        ]
        dt = time.perf_counter() - t
        result["import_nifti"] = {
            "scans": added,
            "shape": "BIDS folder, 61x73x61 voxels (3 mm) x 300 frames -> AAL3",
            "jobs": args.jobs,
            "seconds": round(dt, 2),
            "scans_per_s": round(added / dt, 2),
            "peak_rss_so_far": peak_rss(),
        }

        t = time.perf_counter()
        cfg = SimulationConfig.preset(
            args.preset, n_subjects=args.timing_subjects, seed=args.seed + 1
        )
        rep = simulate_cohort(tmp / "timing", cfg, jobs=args.jobs, progress=False)
        dt = time.perf_counter() - t
        result["simulate_timing"] = {
            "subjects": rep["subjects"],
            "scans": rep["scans"],
            "jobs": args.jobs,
            "seconds": round(dt, 2),
            "scans_per_s": round(rep["scans"] / dt, 1),
            "peak_rss_so_far": peak_rss(),
        }

        cfg = SimulationConfig.preset(args.preset, n_subjects=args.subjects, seed=args.seed)
        t = time.perf_counter()
        rep = simulate_cohort(tmp / "eval", cfg, jobs=args.jobs, progress=False)
        result["simulate_eval"] = {
            "subjects": rep["subjects"],
            "scans": rep["scans"],
            "seconds": round(time.perf_counter() - t, 2),
        }
        cohort = Cohort(tmp / "eval")
        cohort.set_splits(assign_splits(cohort.manifest, seed=args.seed, stratify="diagnosis"))
        result["split"] = {
            s: int(n)
            for s, n in cohort.manifest.drop_duplicates("subject")["split"].value_counts().items()
        }

        rest = subject_table(cohort, "sex")
        X = fc_features(cohort, rest)
        labels = {}
        for label in ("sex", "diagnosis", "age", "fluid_intelligence"):
            t = time.perf_counter()
            fc = fc_linear_baseline(cohort, label, rows=rest, features=X, n_boot=args.n_boot)
            labels[label] = {
                "kind": fc["kind"],
                "n_train": fc["n_train"],
                "n_test": fc["n_test"],
                "majority": majority_baseline(cohort, label, rows=rest, n_boot=args.n_boot)[
                    "metrics"
                ],
                "fc_linear": fc["metrics"],
                "oracle": oracle_scores(cohort, label, fc["test_subjects"], n_boot=args.n_boot)[
                    "metrics"
                ],
                "seconds": round(time.perf_counter() - t, 1),
            }
        result["labels"] = labels

        tasks = cohort.manifest[cohort.manifest["paradigm"] == "task"]
        fc = fc_linear_baseline(cohort, "task", rows=tasks, n_boot=args.n_boot)
        test_rows = tasks.set_index("scan_id").loc[fc["test_scans"]].reset_index()
        oracle_pred = task_oracle(cohort, test_rows)
        result["task_decoding"] = {
            "classes": sorted(tasks["task"].unique().tolist()),
            "n_train": fc["n_train"],
            "n_test": fc["n_test"],
            "majority": majority_baseline(cohort, "task", rows=tasks, n_boot=args.n_boot)[
                "metrics"
            ],
            "fc_linear": fc["metrics"],
            "oracle": score(
                "classification", test_rows["task"].to_numpy(), oracle_pred, n_boot=args.n_boot
            ),
        }
    result["peak_rss"] = peak_rss()
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
