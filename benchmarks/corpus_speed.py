"""Descriptor speed: scans per second of the corpus descriptor families, and where the time goes.

The families are whatever ``fmrilm.corpus.descriptors.families()`` lists (a family whose module
is missing is skipped and named in ``skipped_families``). Cases:

* ``hcp_80x1200``: the 7 real HCP runs of ``builtin:hcp`` (80 AAL2 regions x 1200 frames,
  TR 0.72 s, imported with the default preprocessing), cycled to ``--scans`` scans;
* ``hcp_80x1200_task``: the same scans with a block-design events table (the motor design of
  ``fmrilm.data.simulate``), so the task family runs too;
* ``synthetic_450x490``: ``--scans-450`` synthetic scans of 450 ROIs x 490 frames (UK-Biobank
  sized; TR 0.735 s) with random Yeo-7 network labels: each ROI loads on an AR(1) signal of its
  network plus a global one and noise, robust-scaled like imported data.

Every case runs in this process with BLAS limited to one thread (one core), timing each family
per scan, then again over ``--jobs`` joblib worker processes (loky gives each worker one BLAS
thread). Dynamic-FC states (4 k-means states, as the norms would hold) are fitted on the case's
own scans beforehand, so state assignment is timed too. The FC matrix that several families share
(``Context.fc``) is timed on its own as ``fc``.

    python benchmarks/corpus_speed.py                      # ~1-2 minutes on 2 cores
    python benchmarks/corpus_speed.py --quick              # a few scans per case
    python benchmarks/corpus_speed.py --out benchmarks/results/corpus_speed.json

Prints one JSON object: per case and mode the scans/second and milliseconds per scan, and for the
single-process run the mean milliseconds and the share of time of each family.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from _common import write_result

HCP_TR = 0.72
UKB_ROIS, UKB_FRAMES, UKB_TR = 450, 490, 0.735


# -- families ----------------------------------------------------------------------------------
def load_families() -> tuple[dict, list[str]]:
    """``families()`` with a stub for every descriptor module that does not exist (yet)."""
    from fmrilm.corpus import descriptors

    stubs: list[str] = []
    try:
        while True:
            try:
                fams = descriptors.families()
                break
            except ModuleNotFoundError as exc:
                prefix = "fmrilm.corpus.descriptors."
                if not (exc.name or "").startswith(prefix) or exc.name in sys.modules:
                    raise
                stub = types.ModuleType(exc.name)
                stub.__getattr__ = lambda attr: None  # PEP 562: every function is missing
                sys.modules[exc.name] = stub
                stubs.append(exc.name)
    finally:
        for name in stubs:
            del sys.modules[name]
    present = {k: f for k, f in fams.items() if f is not None}
    return present, sorted(set(fams) - set(present))


# -- scans -------------------------------------------------------------------------------------
def hcp_case(n_scans: int) -> dict:
    from fmrilm.data.cohort import Cohort
    from fmrilm.data.ingest import import_source

    with tempfile.TemporaryDirectory() as tmp:
        import_source("builtin:hcp", Path(tmp) / "hcp", progress=False)
        cohort = Cohort(Path(tmp) / "hcp")
        real = [cohort.scan(i) for i in range(len(cohort))]
        atlas = cohort.atlas(real[0].atlas)
    scans = [
        (real[i % len(real)].data, real[i % len(real)].tr, real[i % len(real)].qc)
        for i in range(n_scans)
    ]
    return {
        "roi_names": atlas.names,
        "networks": atlas.networks,
        "coords": atlas.coords,
        "scans": scans,
        "events": None,
    }


def motor_events(duration_s: float):
    from fmrilm.data.simulate import DEFAULT_TASKS, task_events

    return task_events(DEFAULT_TASKS[0], duration_s)


def synthetic_case(n_scans: int, seed: int = 0) -> dict:
    from fmrilm.data.networks import YEO7
    from fmrilm.data.preprocess import scale

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(YEO7), UKB_ROIS)
    scans = []
    for _ in range(n_scans):
        e = rng.standard_normal((UKB_FRAMES, len(YEO7) + 1))
        latent = np.empty_like(e)  # AR(1), phi = 0.7: slow, BOLD-like fluctuations
        latent[0] = e[0]
        for t in range(1, UKB_FRAMES):
            latent[t] = 0.7 * latent[t - 1] + e[t]
        x = latent[:, labels] + 0.5 * latent[:, -1:] + rng.standard_normal((UKB_FRAMES, UKB_ROIS))
        scans.append((scale(x, "robust"), UKB_TR, {"tsnr": 60.0, "fd_mean": 0.15}))
    return {
        "roi_names": [f"ROI{i:03d}" for i in range(UKB_ROIS)],
        "networks": [YEO7[i] for i in labels],
        "coords": np.zeros((UKB_ROIS, 3)),
        "scans": scans,
        "events": None,
    }


def fit_case_states(case: dict):
    from fmrilm.corpus.descriptors.base import AtlasNorms
    from fmrilm.corpus.descriptors.dynamics import fit_states, window_fc

    windows = [window_fc(x, tr) for x, tr, _ in case["scans"][:20]]
    return AtlasNorms(states=fit_states(np.concatenate(windows)), n_scans=len(windows))


# -- timing ------------------------------------------------------------------------------------
def describe_scan(
    series, tr, qc, roi_names, networks, coords, events, norms, fams=None
) -> dict[str, float]:
    """Seconds spent per family on one scan (``fc``: the shared correlation matrix)."""
    from fmrilm.corpus.descriptors import Context

    if fams is None:
        fams, _ = load_families()
    ctx = Context("bench", series, tr, roi_names, networks, coords, events, qc, norms)
    times = {}
    t0 = time.perf_counter()
    ctx.fc()
    times["fc"] = time.perf_counter() - t0
    for name, fn in fams.items():
        t0 = time.perf_counter()
        fn(ctx)
        times[name] = time.perf_counter() - t0
    return times


def single_process(case: dict, norms, fams: dict) -> dict:
    from threadpoolctl import threadpool_limits

    static = (case["roi_names"], case["networks"], case["coords"], case["events"], norms)
    with threadpool_limits(1):
        describe_scan(*case["scans"][0], *static, fams=fams)  # warm-up: imports, caches
        t0 = time.perf_counter()
        per_scan = [describe_scan(x, tr, qc, *static, fams=fams) for x, tr, qc in case["scans"]]
        wall = time.perf_counter() - t0
    n = len(per_scan)
    family_ms = {k: 1e3 * sum(t[k] for t in per_scan) / n for k in per_scan[0]}
    total = sum(family_ms.values())
    return {
        "scans_per_s": round(n / wall, 2),
        "ms_per_scan": round(1e3 * wall / n, 2),
        "family_ms": {k: round(v, 2) for k, v in family_ms.items()},
        "share": {k: round(v / total, 3) for k, v in family_ms.items()},
    }


def parallel(case: dict, norms, n_jobs: int) -> dict:
    from joblib import Parallel, delayed

    static = (case["roi_names"], case["networks"], case["coords"], case["events"], norms)
    with Parallel(n_jobs=n_jobs) as pool:
        pool(delayed(describe_scan)(*s, *static) for s in case["scans"][:n_jobs])  # start workers
        t0 = time.perf_counter()
        pool(delayed(describe_scan)(*s, *static) for s in case["scans"])
        wall = time.perf_counter() - t0
    n = len(case["scans"])
    return {"scans_per_s": round(n / wall, 2), "ms_per_scan": round(1e3 * wall / n, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", type=int, default=50, help="80-ROI scans per case (default 50)")
    p.add_argument("--scans-450", type=int, default=40, help="450-ROI scans (default 40)")
    p.add_argument("--jobs", type=int, default=2, help="joblib workers (default 2)")
    p.add_argument("--quick", action="store_true", help="8 scans per case")
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = p.parse_args(argv)
    n80, n450 = (8, 8) if args.quick else (args.scans, args.scans_450)

    fams, skipped = load_families()
    hcp = hcp_case(n80)
    hcp_task = {**hcp, "events": motor_events(1200 * HCP_TR)}
    cases = {
        "hcp_80x1200": hcp,
        "hcp_80x1200_task": hcp_task,
        "synthetic_450x490": synthetic_case(n450),
    }
    results = {}
    for name, case in cases.items():
        norms = fit_case_states(case)
        x0 = case["scans"][0][0]
        results[name] = {
            "rois": int(x0.shape[1]),
            "frames": int(x0.shape[0]),
            "scans": len(case["scans"]),
            "single_process": single_process(case, norms, fams),
            f"jobs_{args.jobs}": parallel(case, norms, args.jobs),
        }
        print(f"{name}: {results[name]}", file=sys.stderr)

    result = {
        "config": {
            "families": list(fams),
            "skipped_families": skipped,
            "single_process_blas_threads": 1,
            "jobs": args.jobs,
        },
        "cases": results,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
