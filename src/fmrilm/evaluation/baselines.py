"""Classical baselines: functional connectivity + linear models (scikit-learn).

The connectivity matrix (Fisher-z Pearson correlation, upper triangle) fed to a regularised
linear model is the reference every fMRI foundation model must beat: an independent 2026
preprint finds many do not. Hyper-parameters are chosen by cross-validation inside the training
split only (nested: the test split is never seen while fitting).

The few-shot variant (:func:`fewshot_baseline`, :func:`fewshot_curve`) trains the same model on
only K labelled training subjects per class -- the classical counterpart of in-context or LoRA
few-shot learning by the language model. With so few subjects inner CV is impossible, so the
penalty is then fixed (C=1, alpha=1) and the output says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fmrilm.data.cohort import Cohort
from fmrilm.data.splits import check_splits
from fmrilm.errors import FmrilmError
from fmrilm.evaluation.metrics import (
    CLASSIFICATION,
    REGRESSION,
    repeated_subjects,
    score,
    score_classifier,
    score_regression,
)
from fmrilm.evaluation.rows import eval_rows, label_rows, row_groups
from fmrilm.tasks import summary_fields

MIN_PER_CLASS_FOR_CV = 5  # 5-fold stratified inner CV needs 5 training rows of every class
MIN_ROWS_FOR_CV = 10  # below this, a leave-one-out choice of the ridge penalty is mostly noise


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


def linear_probe(
    X: np.ndarray,
    y: np.ndarray,
    train_mask: np.ndarray,
    test_mask: np.ndarray,
    kind: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    train_groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit StandardScaler + a regularised linear model on ``train_mask`` rows, score ``test_mask``.

    ``groups`` (the subject of each test row) makes the bootstrap resample whole subjects;
    ``train_groups`` (the subject of each training row) keeps a subject's rows in one inner-CV
    fold (``StratifiedGroupKFold`` / ``GroupKFold``), so the penalty is chosen on unseen subjects.

    Classification: ``LogisticRegressionCV`` (C by 5-fold inner CV on balanced accuracy) when
    every training class has at least 5 rows (subjects, with ``train_groups``), else a fixed
    ``LogisticRegression(C=1)``. Regression: ``RidgeCV`` (alpha by efficient leave-one-out, or
    5-fold group CV with ``train_groups``) with at least 10 training rows (subjects), else a fixed
    ``Ridge(alpha=1)``. The test rows are never seen while fitting.

    Returns ``kind``, ``n_train``, ``n_test``, ``y_true``, ``y_pred``, ``metrics``
    (:func:`score_classifier` or :func:`score_regression`), ``model`` (a description),
    ``inner_cv`` (bool) and, for classification, ``classes`` and ``proba`` (test rows x classes).
    """
    X, y = np.asarray(X), np.asarray(y)
    train_mask, test_mask = np.asarray(train_mask, bool), np.asarray(test_mask, bool)
    if kind not in ("classification", "regression"):
        raise FmrilmError(f"kind must be 'classification' or 'regression', got {kind!r}")
    if not train_mask.any() or not test_mask.any():
        raise FmrilmError("linear_probe: the training or the test rows are empty")
    if (train_mask & test_mask).any():
        raise FmrilmError("linear_probe: a row is in both the training and the test rows")
    y_train = y[train_mask]
    if train_groups is not None and len(train_groups) != int(train_mask.sum()):
        raise FmrilmError(
            f"linear_probe: train_groups has {len(train_groups)} entries for "
            f"{int(train_mask.sum())} training rows"
        )
    model, inner_cv, description = _linear_model(kind, y_train, train_groups, seed)
    with warnings.catch_warnings():
        # scikit-learn 1.9 announces API changes of LogisticRegressionCV that do not affect us, and
        # small inner-CV folds may lack a class; neither changes the fitted model
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X[train_mask], y_train)
    pred = model.predict(X[test_mask])
    y_test = y[test_mask]
    out: dict[str, Any] = {
        "kind": kind,
        "n_train": int(train_mask.sum()),
        "n_test": int(test_mask.sum()),
        "y_true": y_test.tolist(),
        "y_pred": pred.tolist(),
        "model": description,
        "inner_cv": inner_cv,
    }
    if kind == "regression":
        out["metrics"] = score_regression(y_test, pred, n_boot=n_boot, seed=seed, groups=groups)
        return out
    # a test class absent from training gets probability 0 (the model cannot predict it)
    trained = np.asarray(model.classes_).tolist()
    classes = sorted(set(trained) | set(y_test.tolist()))
    proba = np.zeros((len(y_test), len(classes)))
    proba[:, [classes.index(c) for c in trained]] = model.predict_proba(X[test_mask])
    out["classes"] = classes
    out["proba"] = np.round(proba, 6).tolist()
    out["metrics"] = score_classifier(
        y_test, pred, proba, classes, n_boot=n_boot, seed=seed, groups=groups
    )
    return out


def _linear_model(
    kind: str, y_train: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
) -> tuple[Any, bool, str]:
    """The estimator for ``kind`` and these training labels, whether it tunes its penalty by
    inner CV, and a one-line description of it.

    With ``groups`` (the subject of each training row) holding a subject more than once, the
    inner folds are subject-disjoint and the minimum counts are counted in subjects.
    """
    grouped = groups is not None and len(set(groups)) < len(groups)
    unit = "subjects" if grouped else "rows"
    if kind == "classification":
        if grouped:
            counts = pd.DataFrame({"g": groups, "y": y_train}).groupby("y")["g"].nunique()
        else:
            counts = pd.Series(y_train).value_counts()
        if len(counts) < 2:
            raise FmrilmError(
                f"the training rows hold a single class ({counts.index[0]!r}); need at least two"
            )
        if counts.min() >= MIN_PER_CLASS_FOR_CV:
            cv: Any = 5
            what = "LogisticRegressionCV (C by 5-fold inner CV on balanced accuracy)"
            if grouped:
                splitter = StratifiedGroupKFold(5, shuffle=True, random_state=seed)
                cv = list(splitter.split(np.zeros(len(y_train)), y_train, groups))
                what = "LogisticRegressionCV (C by 5-fold subject-grouped inner CV on balanced accuracy)"
            est = LogisticRegressionCV(
                Cs=np.logspace(-4, 1, 6), cv=cv, max_iter=2000, scoring="balanced_accuracy"
            )
            return make_pipeline(StandardScaler(), est), True, f"StandardScaler + {what}"
        est = LogisticRegression(C=1.0, max_iter=2000)
        what = (
            f"LogisticRegression(C=1) -- fixed C: the smallest training class has "
            f"{counts.min()} {unit}, too few for {MIN_PER_CLASS_FOR_CV}-fold inner CV"
        )
        return make_pipeline(StandardScaler(), est), False, f"StandardScaler + {what}"
    n = len(set(groups)) if grouped else len(y_train)
    if n >= MIN_ROWS_FOR_CV:
        if grouped:
            cv = list(GroupKFold(5).split(np.zeros(len(y_train)), y_train, groups))
            est = RidgeCV(alphas=np.logspace(-1, 6, 15), cv=cv)
            what = "RidgeCV (alpha by 5-fold subject-grouped inner CV)"
        else:
            est = RidgeCV(alphas=np.logspace(-1, 6, 15))
            what = "RidgeCV (alpha by leave-one-out inner CV)"
        return make_pipeline(StandardScaler(), est), True, f"StandardScaler + {what}"
    what = (
        f"Ridge(alpha=1) -- fixed alpha: {n} training {unit}, too few "
        f"(< {MIN_ROWS_FOR_CV}) for inner CV"
    )
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0)), False, f"StandardScaler + {what}"


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
    may pass precomputed FC vectors for those rows. The model and the returned keys are those
    of :func:`linear_probe`, plus ``label``, ``test_scans`` and ``test_subjects``.
    """
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
    subjects = rows["subject"].to_numpy()
    probe = linear_probe(
        X, y, train, test, kind, n_boot=n_boot, seed=seed,
        groups=repeated_subjects(subjects[test]), train_groups=repeated_subjects(subjects[train]),
    )  # fmt: skip
    return {
        "label": label,
        "test_scans": rows.loc[test, "scan_id"].tolist(),
        "test_subjects": rows.loc[test, "subject"].tolist(),
        **probe,
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


def fewshot_baseline(
    cohort: Cohort,
    label: str,
    k: int,
    *,
    rows: pd.DataFrame | None = None,
    features: np.ndarray | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    n_boot: int = 1000,
    train_splits: tuple[str, ...] = ("train",),
    test_split: str = "test",
) -> dict[str, Any]:
    """FC + linear model trained on only ``k`` labelled training subjects per class.

    Classification draws ``k`` distinct subjects of every class (one row each: that subject's
    first row of the class) from ``train_splits``; regression draws ``2 * k`` subjects. Each seed
    draws its own subjects; the model (:func:`linear_probe`, which falls back to a fixed C or
    alpha when there are too few subjects for inner CV) is scored on every ``test_split`` row.

    Returns ``label``, ``kind``, ``k``, ``n_train`` (rows per seed), ``n_test``,
    ``test_subjects``, ``model``, ``inner_cv``, ``metrics`` -- each [v, lo, hi] metric as
    [mean over seeds, min over seeds, max over seeds] of the point estimates (``interval``
    says so) -- and ``per_seed``: [{"seed", "train_subjects", "metrics"}] with each seed's
    full metrics and bootstrap intervals over test subjects.
    """
    check_splits(cohort.manifest)
    if not seeds:
        raise FmrilmError("fewshot_baseline: seeds is empty; pass at least one seed")
    rows = subject_table(cohort, label) if rows is None else rows
    kind = label_kind(cohort, label)
    pools = _fewshot_pools(rows, label, kind, train_splits)
    _check_k(k, pools, label)
    test_pos = np.flatnonzero((rows["split"] == test_split).to_numpy())
    if not len(test_pos):
        raise FmrilmError(f"{cohort.root}: the {test_split} split has no rows labelled {label!r}")
    picks = {seed: _fewshot_pick(pools, k, kind, seed) for seed in seeds}
    take = _feature_rows(cohort, rows, features, [test_pos, *picks.values()])
    y_all = rows[label].to_numpy()
    subjects = rows["subject"].to_numpy()
    per_seed = []
    for seed, train_pos in picks.items():
        X = np.concatenate([take(train_pos), take(test_pos)])
        y = np.concatenate([y_all[train_pos], y_all[test_pos]])
        train = np.arange(len(y)) < len(train_pos)
        probe = linear_probe(
            X, y, train, ~train, kind, n_boot=n_boot, seed=seed,
            groups=repeated_subjects(subjects[test_pos]),
        )  # fmt: skip
        per_seed.append(
            {
                "seed": seed,
                "train_subjects": subjects[train_pos].tolist(),
                "metrics": probe["metrics"],
                "model": probe["model"],
                "inner_cv": probe["inner_cv"],
            }
        )
    return {
        "label": label,
        "kind": kind,
        "k": int(k),
        "n_train": len(next(iter(picks.values()))),
        "n_test": len(test_pos),
        "test_subjects": subjects[test_pos].tolist(),
        "model": per_seed[0]["model"],
        "inner_cv": per_seed[0]["inner_cv"],
        "interval": f"min/max over {len(seeds)} seeds (the training subjects drawn)",
        "metrics": _seed_summary([s["metrics"] for s in per_seed]),
        "per_seed": per_seed,
    }


def _feature_rows(cohort: Cohort, rows: pd.DataFrame, features, positions: list[np.ndarray]):
    """A function from row positions to their feature rows: ``features`` (one per row of
    ``rows``) or FC vectors computed once for the rows at ``positions``."""
    if features is None:
        needed = np.unique(np.concatenate(positions))
        X_needed = fc_features(cohort, rows.iloc[needed])
        lookup = {int(pos): i for i, pos in enumerate(needed)}
        return lambda pos: X_needed[[lookup[int(p)] for p in pos]]
    X_all = np.asarray(features)
    if len(X_all) != len(rows):
        raise FmrilmError(
            f"features has {len(X_all)} rows but rows has {len(rows)}; pass one per row"
        )
    return lambda pos: X_all[pos]


def fewshot_curve(
    cohort: Cohort,
    label: str,
    ks: tuple[int, ...] = (2, 4, 8, 16, 32),
    *,
    rows: pd.DataFrame | None = None,
    features: np.ndarray | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    n_boot: int = 200,
    train_splits: tuple[str, ...] = ("train",),
    test_split: str = "test",
) -> dict[str, Any]:
    """The few-shot FC + linear baseline's primary metric against K.

    Returns {"k", "metric" ("balanced_accuracy" or "r2"), "value" (mean over seeds), "lo", "hi"
    (min and max over seeds: the spread due to which K subjects were drawn, not a bootstrap
    interval), "interval", "note", "skipped" (the Ks larger than the training split allows)} --
    the shape of a ``fewshot`` curve of :func:`fmrilm.evaluation.report.write_report`.
    """
    if not ks:
        raise FmrilmError("fewshot_curve: ks is empty; pass the K values to try")
    for k in ks:
        if not isinstance(k, int | np.integer) or k < 1:
            raise FmrilmError(f"fewshot_curve: every K must be a positive integer, got {k!r}")
    rows = subject_table(cohort, label) if rows is None else rows
    kind = label_kind(cohort, label)
    pools = _fewshot_pools(rows, label, kind, train_splits)
    largest = _largest_k(pools, kind)
    usable = [k for k in ks if k <= largest]
    skipped = [k for k in ks if k > largest]
    if not usable:
        _check_k(min(ks), pools, label)  # raises the message naming the limiting class
    if features is None:
        features = fc_features(cohort, rows)
    metric = "balanced_accuracy" if kind == "classification" else "r2"
    curve: dict[str, Any] = {"k": [], "metric": metric, "value": [], "lo": [], "hi": []}
    for k in usable:
        res = fewshot_baseline(
            cohort,
            label,
            k,
            rows=rows,
            features=features,
            seeds=seeds,
            n_boot=n_boot,
            train_splits=train_splits,
            test_split=test_split,
        )
        value, lo, hi = res["metrics"][metric]
        curve["k"].append(k)
        curve["value"].append(value)
        curve["lo"].append(lo)
        curve["hi"].append(hi)
    unit = "subjects per class" if kind == "classification" else "x 2 subjects (regression)"
    curve["interval"] = f"min/max over {len(seeds)} seeds"
    note = (
        f"FC + linear model on K {unit} from {'+'.join(train_splits)}; mean over "
        f"{len(seeds)} seeds, band = min/max over seeds"
    )
    if skipped:
        note += f"; skipped K={skipped} (largest possible K is {largest})"
    curve["note"] = note
    curve["skipped"] = skipped
    return curve


def _fewshot_pools(
    rows: pd.DataFrame, label: str, kind: str, train_splits: tuple[str, ...]
) -> dict[Any, np.ndarray]:
    """Positions (into ``rows``) of candidate training rows, one per subject, by class.

    Regression has a single pool under the key ``None``.
    """
    train = rows["split"].isin(train_splits).to_numpy() & rows[label].notna().to_numpy()
    table = rows.assign(_pos=np.arange(len(rows)))[train]
    if kind == "regression":
        return {None: table.drop_duplicates("subject")["_pos"].to_numpy()}
    return {
        cls: group.drop_duplicates("subject")["_pos"].to_numpy()
        for cls, group in sorted(table.groupby(label), key=lambda kv: str(kv[0]))
    }


def _largest_k(pools: dict[Any, np.ndarray], kind: str) -> int:
    if not pools:
        return 0
    smallest = min(len(p) for p in pools.values())
    return smallest // 2 if kind == "regression" else smallest


def _check_k(k: int, pools: dict[Any, np.ndarray], label: str) -> None:
    if not isinstance(k, int | np.integer) or k < 1:
        raise FmrilmError(f"K must be a positive integer, got {k!r}")
    if not pools:
        raise FmrilmError(f"no training subjects labelled {label!r}")
    if None in pools:
        if 2 * k > len(pools[None]):
            raise FmrilmError(
                f"K={k} needs 2K={2 * k} training subjects but only {len(pools[None])} "
                f"have a {label!r} label"
            )
        return
    if len(pools) < 2:
        raise FmrilmError(f"the training subjects hold a single {label!r} class: {list(pools)}")
    for cls, pool in pools.items():
        if k > len(pool):
            raise FmrilmError(f"K={k} but class {cls!r} has only {len(pool)} training subjects")


def _fewshot_pick(pools: dict[Any, np.ndarray], k: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 2 * k if kind == "regression" else k
    return np.concatenate([np.sort(rng.choice(pool, n, replace=False)) for pool in pools.values()])


def _seed_summary(per_seed: list[dict]) -> dict[str, list]:
    """[mean, min, max] over seeds of each metric's point estimate ([v, lo, hi] metrics only)."""
    out = {}
    for name in (*CLASSIFICATION, "auroc", *REGRESSION):
        if name not in per_seed[0]:
            continue
        values = [m[name][0] for m in per_seed if m[name][0] is not None]
        if not values:
            out[name] = [None, None, None]
            continue
        out[name] = [round(float(np.mean(values)), 4), min(values), max(values)]
    return out


# --- a task's baselines on the rows the model is asked about -----------------------------------


def fit_probe(X: np.ndarray, task, train_rows, test_rows, n_boot: int) -> dict[str, Any]:
    """:func:`linear_probe` on features ``X`` of the training rows then the test rows, labels
    from ``_label``; subject-grouped inner CV and bootstrap where a subject has several rows."""
    y = pd.concat([train_rows, test_rows])["_label"].to_numpy()
    if task.kind == "regression":
        y = y.astype(float)
    train_mask = np.r_[np.ones(len(train_rows), bool), np.zeros(len(test_rows), bool)]
    return linear_probe(
        X, y, train_mask, ~train_mask, task.kind, n_boot=n_boot, groups=row_groups(test_rows),
        train_groups=row_groups(train_rows),
    )  # fmt: skip


def descriptor_features(corpus, rows: pd.DataFrame) -> np.ndarray:
    """(n_rows, n_fields) z-values of the descriptor line's fields (0 where a scan lacks one)."""
    fields = [summary_fields(corpus.record(s)) for s in rows["scan_id"]]
    names = sorted({k for f in fields for k in f})
    return np.array([[f.get(k, 0.0) for k in names] for f in fields], dtype=float).reshape(
        len(rows), len(names)
    )


def task_baselines(
    cohort, task, train_rows, test_rows, *, n_boot: int, shots: Sequence[int], corpus=None
):
    """Majority, FC + linear model, (few-shot) FC curve and, with ``corpus`` (a CorpusView), a
    linear model on the descriptor values of the descriptor line -- all on the same rows."""
    methods, notes, curves = {}, [], {}
    res = _task_majority(task, train_rows, test_rows, n_boot)
    methods["majority" if task.kind == "classification" else "training mean"] = (res, "baseline")
    both = pd.concat([train_rows, test_rows])
    X = fc_features(cohort, both)
    fc = fit_probe(X, task, train_rows, test_rows, n_boot)
    methods["FC+LR" if task.kind == "classification" else "FC+ridge"] = (fc, "baseline")
    if corpus is not None:
        D = descriptor_features(corpus, both)
        if D.shape[1]:
            res = fit_probe(D, task, train_rows, test_rows, n_boot)
            name = "descriptors+LR" if task.kind == "classification" else "descriptors+ridge"
            methods[name] = (res, "baseline")
    if shots and task.kind in ("classification", "regression"):
        curve, curve_notes = task_fc_curve(cohort, task, both, X, test_rows, shots)
        curves.update({"FC few-shot": curve} if curve else {})
        notes += curve_notes
    return methods, curves, notes


def _task_majority(task, train_rows, test_rows, n_boot: int) -> dict[str, Any]:
    """The training split's most frequent class (regression: its mean) for every test row."""
    y_train = train_rows["_label"].to_numpy()
    y_test = test_rows["_label"].tolist()
    groups = row_groups(test_rows)
    if task.kind == "classification":
        values, counts = np.unique(
            np.asarray(y_train, dtype=object).astype(str), return_counts=True
        )
        top = values[np.argmax(counts)]
        guess = next(v for v in task.values if str(v) == top)
        return score_classifier(
            y_test, [guess] * len(y_test), classes=list(task.values), n_boot=n_boot,
            groups=groups,
        )  # fmt: skip
    guess = float(np.mean(y_train.astype(float)))
    return score_regression(
        np.asarray(y_test, float), np.full(len(y_test), guess), n_boot=n_boot, groups=groups
    )


def task_fc_curve(cohort, task, both, X, test_rows, shots) -> tuple[dict | None, list[str]]:
    """The FC few-shot curve on ``both`` (training then test rows, FC features ``X``)."""
    y = both["_label"].to_numpy()
    y = y.astype(float) if task.kind == "regression" else y
    try:
        curve = fewshot_curve(
            cohort, task.name, ks=tuple(shots), rows=both.assign(**{task.name: y}), features=X,
            n_boot=200, train_splits=("train",), test_split=str(test_rows["split"].iloc[0]),
        )  # fmt: skip
    except FmrilmError as exc:
        return None, [f"{task.name}: FC few-shot curve skipped ({exc})"]
    notes = [f"{task.name}: FC few-shot: {curve['note']}"] if curve.get("note") else []
    return {k: curve[k] for k in ("k", "metric", "value", "lo", "hi") if k in curve}, notes


def fc_fewshot_curve(
    cohort, task, shots: Sequence[int], *, split: str = "test", max_rows: int | None = None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The FC few-shot baseline curve alone (as in ``run_eval``'s baselines), and its notes."""
    test_rows = eval_rows(cohort, task, split, max_rows)
    both = pd.concat([label_rows(cohort, task, "train"), test_rows])
    return task_fc_curve(cohort, task, both, fc_features(cohort, both), test_rows, shots)
