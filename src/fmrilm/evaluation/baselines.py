"""Classical baselines: functional connectivity + linear models (scikit-learn).

The connectivity matrix (Fisher-z Pearson correlation, upper triangle) fed to a regularised
linear model is the reference every fMRI foundation model must beat: an independent 2026
preprint finds many do not. Hyper-parameters are chosen by cross-validation inside the training
split only (nested: the test split is never seen while fitting).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmrilm.data.cohort import Cohort
from fmrilm.errors import FmrilmError
from fmrilm.evaluation.metrics import score


def fc_vector(series: np.ndarray) -> np.ndarray:
    """Upper triangle of the Fisher-z correlation matrix, shape (n_rois * (n_rois - 1) / 2,)."""
    c = np.corrcoef(np.asarray(series, dtype=np.float64).T)
    iu = np.triu_indices_from(c, k=1)
    return np.arctanh(np.clip(c[iu], -0.999999, 0.999999))


def fc_features(cohort: Cohort, rows: pd.DataFrame) -> np.ndarray:
    """FC vectors of the given manifest rows, shape (n_rows, n_edges)."""
    return np.stack([fc_vector(cohort.series(sid)) for sid in rows["scan_id"]])


def subject_table(cohort: Cohort, label: str, task: str = "rest") -> pd.DataFrame:
    """One scan per subject (the first ``task`` run) with its split and label."""
    m = cohort.manifest
    if label not in m.columns:
        raise FmrilmError(
            f"{cohort.root}: no phenotype column {label!r} (have {cohort.phenotype_columns})"
        )
    rows = m[(m["task"] == task) & m[label].notna()].drop_duplicates("subject")
    if rows.empty:
        raise FmrilmError(f"{cohort.root}: no {task!r} scans with a {label!r} label")
    return rows


def label_kind(cohort: Cohort, label: str) -> str:
    """'regression' for numeric phenotypes, else 'classification' (categorical, task names)."""
    return "regression" if cohort.meta["phenotypes"].get(label) == "numeric" else "classification"


def fc_linear_baseline(
    cohort: Cohort,
    label: str,
    *,
    rows: pd.DataFrame | None = None,
    train_splits: tuple[str, ...] = ("train", "val"),
    test_split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit FC + logistic (categorical label) or ridge (numeric label) and score the test split.

    ``rows`` are the manifest rows to use (default: one resting scan per subject); ``features``
    may pass precomputed FC vectors for those rows.
    """
    from fmrilm.data.splits import check_splits

    check_splits(cohort.manifest)
    rows = subject_table(cohort, label) if rows is None else rows
    X = fc_features(cohort, rows) if features is None else features
    train = rows["split"].isin(train_splits).to_numpy()
    test = (rows["split"] == test_split).to_numpy()
    if not train.any() or not test.any():
        raise FmrilmError(
            f"{cohort.root}: the train or {test_split} split has no scans labelled {label!r}"
        )
    y = rows[label].to_numpy()
    kind = label_kind(cohort, label)
    if kind == "classification":
        model = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=np.logspace(-4, 1, 6), cv=5, max_iter=2000, scoring="balanced_accuracy"
            ),
        )
    else:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 6, 15)))
    with warnings.catch_warnings():
        # scikit-learn 1.9 announces API changes of LogisticRegressionCV that do not affect us, and
        # small inner-CV folds may lack a class; neither changes the fitted model
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X[train], y[train])
    pred = model.predict(X[test])
    return {
        "label": label,
        "kind": kind,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "test_scans": rows.loc[test, "scan_id"].tolist(),
        "test_subjects": rows.loc[test, "subject"].tolist(),
        "y_true": y[test].tolist(),
        "y_pred": pred.tolist(),
        "metrics": score(kind, y[test], pred, n_boot=n_boot, seed=seed),
    }


def majority_baseline(
    cohort: Cohort, label: str, *, rows: pd.DataFrame | None = None, n_boot: int = 1000
) -> dict[str, Any]:
    """Predict the training split's most frequent class (or mean) for every test scan."""
    rows = subject_table(cohort, label) if rows is None else rows
    train = rows[rows["split"].isin(("train", "val"))]
    test = rows[rows["split"] == "test"]
    kind = label_kind(cohort, label)
    guess = train[label].mean() if kind == "regression" else train[label].mode().iloc[0]
    pred = np.full(len(test), guess, dtype=object if kind == "classification" else float)
    return {
        "label": label,
        "kind": kind,
        "metrics": score(kind, test[label].to_numpy(), pred, n_boot=n_boot),
    }
