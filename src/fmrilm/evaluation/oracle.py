"""The simulator's oracle scored on the same test subjects as every other method."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.cohort import Cohort
from fmrilm.data.preprocess import PreprocessConfig, clean
from fmrilm.data.simulate import (
    SimulationConfig,
    hcp_grounding,
    load_truth,
    network_patterns,
    task_events,
    task_signal,
)
from fmrilm.evaluation.metrics import score, score_classifier
from fmrilm.evaluation.rows import row_groups

ORACLE_COLUMNS = {
    "sex": "oracle_sex",
    "diagnosis": "oracle_diagnosis",
    "age": "oracle_age",
    "fluid_intelligence": "oracle_fluid_intelligence",
}


def oracle_scores(
    cohort: Cohort, label: str, subjects: list[str], *, n_boot: int = 1000
) -> dict[str, Any]:
    """Scores of the Bayes-optimal prediction from the true latent parameters (upper bound)."""
    truth = load_truth(cohort.root).set_index("subject").loc[subjects]
    kind = "regression" if cohort.meta["phenotypes"].get(label) == "numeric" else "classification"
    return {
        "label": label,
        "kind": kind,
        "metrics": score(
            kind, truth[label].to_numpy(), truth[ORACLE_COLUMNS[label]].to_numpy(), n_boot=n_boot
        ),
    }


def task_oracle(cohort: Cohort, rows: pd.DataFrame) -> np.ndarray:
    """Task decoding with the generative truth: a likelihood-ratio test per candidate task.

    For each scan and each simulated task ``c``, the oracle builds the exact task signal the
    simulator would add (design, HRF, regions, amplitude), passes it through the cohort's own
    preprocessing, and scores ``sum_t s_t' S^-1 y_t - s_t' S^-1 s_t / 2`` with the subject's true
    spatial covariance ``S`` (real-HCP FC + the subject's true component amplitudes + site
    noise), rescaled to the stored units. It ignores temporal autocorrelation and motion, so it
    is near-optimal rather than exactly Bayes-optimal.
    """
    config = SimulationConfig()
    g = hcp_grounding()
    V = network_patterns(config, g.atlas)
    truth = load_truth(cohort.root).set_index("subject")
    amp_cols = [f"a_{c.name}" for c in config.components]
    sites = {s.name: s for s in config.sites}
    pre = PreprocessConfig.from_dict(cohort.preprocessing)
    base = g.mixing @ g.mixing.T
    preds = []
    for sid in rows["scan_id"]:
        row = cohort.row(sid)
        y = np.asarray(cohort.series(sid), dtype=np.float64)  # (n_frames, n_rois)
        n, tr = y.shape[0], float(row["tr"])
        a = truth.loc[row["subject"], amp_cols].to_numpy(dtype=float)
        cov = base + (V * a**2) @ V.T + sites[row["site"]].noise ** 2 * np.eye(len(base))
        # stored units: each ROI was scaled by an unknown factor; match the model's variance
        scale = np.sqrt(np.diag(cov)) / y.std(axis=0)
        cov_y = cov / np.outer(scale, scale)
        prec = np.linalg.inv(cov_y)
        best, best_llr = "", -np.inf
        for task in config.tasks:
            s = task_signal(task, task_events(task, n * tr), n, tr, g.atlas)
            s = clean(s, tr, pre) / scale  # the same linear cleaning the data went through
            sp = s @ prec
            llr = float(np.sum(sp * y) - 0.5 * np.sum(sp * s))
            if llr > best_llr:
                best, best_llr = task.name, llr
        preds.append(best)
    return np.array(preds)


def oracle_for_rows(cohort: Cohort, task, test_rows: pd.DataFrame, *, n_boot: int):
    """The simulator's best achievable prediction for ``task`` on ``test_rows`` (labels in
    ``_label``), when it exists: None on a real cohort or for a task the oracle cannot answer."""
    if not (cohort.root / "simulation").exists() or task.label_from != "column":
        return None
    if task.column in ORACLE_COLUMNS:
        return oracle_scores(cohort, task.column, test_rows["subject"].tolist(), n_boot=n_boot)
    if task.column == "task":
        pred = task_oracle(cohort, test_rows)
        known = {str(v) for v in task.values}
        pred = [p if p in known else None for p in pred]
        return score_classifier(
            test_rows["_label"].tolist(), pred, classes=list(task.values), n_boot=n_boot,
            groups=row_groups(test_rows),
        )  # fmt: skip
    return None
