"""Classifier metrics, few-shot baselines and the HTML evaluation report."""

import copy
import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm
from test_evaluation import _toy_cohort

from fmrilm.errors import FmrilmError
from fmrilm.evaluation.baselines import (
    fc_linear_baseline,
    fewshot_baseline,
    fewshot_curve,
    linear_probe,
)
from fmrilm.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    expected_calibration_error,
    f1,
    invalid_rate,
    reliability_curve,
    score,
    score_classifier,
)
from fmrilm.evaluation.report import method_entry, validate_metrics, write_report

# --- metrics -------------------------------------------------------------------------------------


def test_auroc_perfect_reversed_and_uninformative():
    y = ["a", "a", "b", "b"]
    perfect = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    assert auroc(y, perfect, ["a", "b"]) == 1.0
    assert auroc(y, perfect[:, ::-1], ["a", "b"]) == 0.0
    assert auroc(y, np.full((4, 2), 0.5), ["a", "b"]) == 0.5  # ties count one half
    # one positive ranked below one negative: 3 of 4 pairs ordered
    assert auroc(y, [[0.9, 0.1], [0.35, 0.65], [0.4, 0.6], [0.2, 0.8]], ["a", "b"]) == 0.75
    assert auroc(["a", "a"], perfect[:2], ["a", "b"]) is None  # one class: undefined


def test_multiclass_auroc_is_one_vs_rest_macro():
    rng = np.random.default_rng(0)
    y = rng.choice(["x", "y", "z"], 30)
    proba = rng.dirichlet(np.ones(3), 30)
    expected = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert auroc(y, proba, ["x", "y", "z"]) == pytest.approx(expected)


def test_macro_f1_by_hand():
    # class a: tp 2, fp 1, fn 1 -> 4/6; class b: tp 1, fp 1, fn 1 -> 2/4
    assert f1(list("aaabb"), list("aabba")) == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert f1(list("aabb"), list("aabb")) == 1.0


def test_ece_is_zero_for_a_calibrated_toy_and_the_gap_otherwise():
    y = ["a"] * 8 + ["b"] * 2
    calibrated = np.tile([0.8, 0.2], (10, 1))  # says 80 %, right 8 times of 10
    assert expected_calibration_error(y, calibrated, ["a", "b"]) == pytest.approx(0.0)
    assert reliability_curve(y, calibrated, ["a", "b"]) == {
        "confidence": [0.8],
        "accuracy": [0.8],
        "count": [10],
    }
    y = ["a"] * 5 + ["b"] * 5
    certain = np.tile([1.0, 0.0], (10, 1))  # says 100 %, right half the time
    assert expected_calibration_error(y, certain, ["a", "b"]) == pytest.approx(0.5)


def test_invalid_predictions_count_as_wrong_and_are_reported():
    assert invalid_rate(["a", None, float("nan"), "b"]) == 0.5
    res = score_classifier(["a", "a", "b", "b"], ["a", None, "b", None], n_boot=50)
    assert res["accuracy"][0] == 0.5 and res["balanced_accuracy"][0] == 0.5
    assert res["invalid_rate"] == 0.5
    assert res["confusion"] == [[1, 0], [0, 1]]  # invalid answers are in no column
    assert res["f1"][0] == pytest.approx(2 / 3, abs=1e-4)  # each class: tp 1, fn 1 -> F1 2/3
    assert score("classification", ["a", "b"], ["a", None], n_boot=20)["invalid_rate"] == 0.5
    # an answer outside the classes is refused, never mapped to a class
    with pytest.raises(FmrilmError, match="map an unparseable answer to None"):
        score_classifier(["a", "b"], ["a", "maybe"], classes=["a", "b"])


def test_bootstrap_resamples_subjects_jointly_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.choice(["a", "b", "c"], 60)
    pred = np.where(rng.random(60) < 0.7, y, rng.choice(["a", "b", "c"], 60))
    proba = rng.dirichlet(np.ones(3), 60)
    res = score_classifier(y, pred, proba, ["a", "b", "c"], n_boot=400, seed=3)
    for name in ("accuracy", "balanced_accuracy", "f1", "auroc"):
        value, lo, hi = res[name]
        assert lo <= value <= hi and hi - lo < 0.5, name
    # the same resamples as the generic bootstrap, hence the same intervals
    expected = bootstrap_ci(skm.balanced_accuracy_score, y, pred, n_boot=400, seed=3)
    np.testing.assert_allclose(res["balanced_accuracy"], expected, atol=1e-4)
    # rows resampled jointly: perfect predictions stay perfect in every resample
    exact = score_classifier(y, y, n_boot=200)
    assert exact["accuracy"] == [1.0, 1.0, 1.0] and exact["f1"] == [1.0, 1.0, 1.0]
    assert "auroc" not in exact and exact["ece"] is None  # no proba: no AUROC, no calibration


def test_undefined_metrics_are_none_not_a_number():
    res = score_classifier(["a"] * 5, ["a", "a", "b", "a", "a"], np.tile([0.6, 0.4], (5, 1)))
    assert res["accuracy"][0] == 0.8
    assert res["balanced_accuracy"] == [None, None, None]
    assert res["auroc"] == [None, None, None]


# --- few-shot baseline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_cohort(tmp_path_factory.mktemp("fewshot") / "c", n=40)


def test_fewshot_trains_on_k_training_subjects_per_class(toy):
    m = toy.manifest.set_index("subject")
    res = fewshot_baseline(toy, "group", 3, seeds=(0, 1), n_boot=50)
    assert res["n_train"] == 6 and not res["inner_cv"] and "fixed C" in res["model"]
    drawn = []
    for seed in res["per_seed"]:
        subjects = seed["train_subjects"]
        assert len(set(subjects)) == 6
        assert set(m.loc[subjects, "split"]) == {"train"}
        assert sorted(m.loc[subjects, "group"]) == ["A"] * 3 + ["B"] * 3
        drawn.append(tuple(subjects))
    assert drawn[0] != drawn[1]  # each seed draws its own subjects
    assert set(res["test_subjects"]) == set(m.index[m["split"] == "test"])
    value, lo, hi = res["metrics"]["balanced_accuracy"]
    per_seed = [s["metrics"]["balanced_accuracy"][0] for s in res["per_seed"]]
    assert lo == min(per_seed) and hi == max(per_seed) and value == pytest.approx(np.mean(per_seed))


def test_fewshot_refuses_a_k_larger_than_a_class(toy):
    n_a = toy.manifest.query("split == 'train' and group == 'A'")["subject"].nunique()
    with pytest.raises(FmrilmError, match=f"K=99 but class 'A' has only {n_a} training subjects"):
        fewshot_baseline(toy, "group", 99)
    with pytest.raises(FmrilmError, match="positive integer"):
        fewshot_baseline(toy, "group", 0)


def test_fewshot_curve_skips_ks_that_do_not_fit(toy):
    curve = fewshot_curve(toy, "group", ks=(2, 4, 99), seeds=(0, 1), n_boot=20)
    assert curve["k"] == [2, 4] and curve["skipped"] == [99] and "skipped K=[99]" in curve["note"]
    assert curve["metric"] == "balanced_accuracy"
    assert all(
        lo <= v <= hi for v, lo, hi in zip(curve["value"], curve["lo"], curve["hi"], strict=True)
    )


def test_linear_probe_returns_probabilities_in_class_order():
    rng = np.random.default_rng(0)
    y = np.repeat(["n", "p"], 20)
    X = rng.standard_normal((40, 3)) + (y == "p")[:, None] * 2.0
    train = np.arange(40) % 4 != 0
    res = linear_probe(X, y, train, ~train, "classification", n_boot=50)
    assert res["classes"] == ["n", "p"] and res["inner_cv"]
    proba = np.asarray(res["proba"])
    assert proba.shape == (10, 2)
    np.testing.assert_array_equal(np.array(res["classes"])[proba.argmax(1)], res["y_pred"])
    assert res["metrics"]["auroc"][0] > 0.9


def test_fc_baseline_keeps_its_keys_and_adds_probabilities(toy):
    res = fc_linear_baseline(toy, "group", n_boot=50)
    for key in ("label", "kind", "n_train", "n_test", "test_subjects", "y_true", "y_pred"):
        assert key in res
    assert {"accuracy", "balanced_accuracy", "f1", "auroc", "ece"} <= set(res["metrics"])
    assert len(res["proba"]) == res["n_test"]


# --- report ---------------------------------------------------------------------------------------------


def _metrics() -> dict:
    return {
        "title": "toy evaluation",
        "model": "fmrilm-toy",
        "cohort": "toy",
        "split": "test",
        "created": "2026-01-02T03:04:05",
        "tasks": {
            "sex": {
                "kind": "classification",
                "n_test": 40,
                "classes": ["F", "M"],
                "methods": {
                    "fmrilm zero-shot": {
                        "group": "fmrilm",
                        "metrics": {"balanced_accuracy": [0.52, 0.40, 0.64], "ece": 0.1},
                        "invalid_rate": 0.05,
                        "confusion": [[10, 8], [10, 10]],
                        "calibration": {
                            "confidence": [0.55, 0.7],
                            "accuracy": [0.5, 0.6],
                            "count": [20, 18],
                        },
                    },
                    "FC+LR": {
                        "group": "baseline",
                        "metrics": {"balanced_accuracy": [0.61, 0.5, 0.75]},
                    },
                    "simulator oracle": {"group": "oracle", "metrics": {"balanced_accuracy": 0.9}},
                },
                "fewshot": {
                    "fc+lr": {
                        "k": [2, 4, 8],
                        "metric": "balanced_accuracy",
                        "value": [0.5, 0.55, 0.6],
                        "lo": [0.4, 0.45, 0.5],
                        "hi": [0.6, 0.65, 0.7],
                    },
                    "in-context": {
                        "k": [2, 4],
                        "metric": "balanced_accuracy",
                        "value": [0.5, None],
                    },
                },
            },
            "age": {
                "kind": "regression",
                "n_test": 40,
                "methods": {
                    "FC+ridge": {
                        "group": "baseline",
                        "metrics": {"r2": [0.1, -0.1, 0.3], "mae": 8.0},
                    }
                },
            },
        },
        "retrieval": {
            "fmri_to_text": {"recall_at": {"1": 0.1, "5": 0.3}, "median_rank": 9, "n": 40},
            "text_to_fmri": {
                "recall_at": {"1": 0.05},
                "median_rank": 12.5,
                "n": 40,
                "curve": {"k": [1, 5, 10], "recall": [0.05, 0.2, 0.4]},
            },
        },
        "throughput": {"scans_per_s": 12.5},
        "notes": ["<toy> numbers"],
    }


def test_write_report_writes_json_html_and_figures(tmp_path):
    metrics = _metrics()
    path = write_report(metrics, tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html"
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text()) == metrics
    page = path.read_text()
    for name in ("sex", "age", "fmrilm zero-shot", "FC+LR", "simulator oracle", "FC+ridge"):
        assert name in page
    assert (
        "fmrilm zero-shot is below the FC+LR baseline on sex (0.52 vs 0.61 balanced accuracy"
        in (page)
    )
    assert "includes chance (0.50 balanced accuracy)" in page
    assert "5.0% of the 40 test subjects" in page
    assert "&lt;toy&gt; numbers" in page  # text is escaped
    images = sorted(set(re.findall(r'<img src="([^"]+)"', page)))
    assert len(images) == 6  # sex: bars, few-shot, confusion, calibration; age: bars; retrieval
    for name in images:
        assert "/" not in name  # relative to the report
        assert (tmp_path / "rep" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _broken(path: str, value) -> dict:
    """A copy of the toy metrics with ``value`` at the dotted ``path`` (None: key removed)."""
    metrics = copy.deepcopy(_metrics())
    *parents, last = path.split(".")
    node = metrics
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return metrics


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("title", None, "metrics: missing key 'title'"),
        ("created", "yesterday", "created: expected an ISO 8601"),
        ("tasks", {}, "tasks: expected a non-empty object"),
        ("tasks.sex.kind", "ranking", "tasks.sex.kind: expected 'classification'"),
        ("tasks.sex.classes", None, "tasks.sex.classes: a classification task needs"),
        ("tasks.sex.methods.FC+LR.group", "base", r"FC\+LR.group: expected one of"),
        (
            "tasks.sex.methods.FC+LR.metrics.balanced_accuracy",
            "high",
            "expected \\[value, lo, hi\\]",
        ),
        ("tasks.sex.methods.FC+LR.metrics.balanced_accuracy", [0.6, 0.7, 0.5], "lo > hi"),
        ("tasks.sex.methods.FC+LR.metric", {}, "unknown key 'metric'"),
        ("tasks.sex.methods.fmrilm zero-shot.confusion", [[1, 2]], "expected a 2x2 list"),
        ("tasks.sex.methods.fmrilm zero-shot.invalid_rate", 5, "a fraction in \\[0, 1\\]"),
        ("tasks.sex.fewshot.fc+lr.lo", [0.1], "a list as long as k"),
        ("tasks.age.primary_metric", "auroc", "'auroc' is in no method's metrics"),
        ("retrieval.fmri_to_text.recall_at", {"one": 0.1}, "positive integers as strings"),
        ("notes", "remember", "notes: expected a list of strings"),
    ],
)
def test_malformed_metrics_are_refused_with_the_bad_key(tmp_path, path, value, message):
    with pytest.raises(FmrilmError, match=message):
        write_report(_broken(path, value), tmp_path / "rep")
    assert not (tmp_path / "rep").exists()  # nothing written


def test_method_entry_turns_scores_into_a_valid_method():
    scores = score_classifier(["a", "b", "a", "b"], ["a", "b", None, "a"], np.eye(2)[[0, 1, 0, 0]])
    entry = method_entry(scores, "fmrilm", note="zero-shot")
    assert entry["metrics"]["auroc"][0] == 0.75 and entry["metrics"]["ece"] == scores["ece"]
    assert entry["invalid_rate"] == 0.25 and entry["confusion"] == [[1, 0], [1, 1]]
    metrics = _metrics()
    metrics["tasks"]["sex"]["classes"] = ["a", "b"]
    metrics["tasks"]["sex"]["methods"]["fmrilm zero-shot"] = entry
    validate_metrics(metrics)


def test_cluster_bootstrap_resamples_whole_subjects():
    from fmrilm.evaluation.metrics import score_regression

    rng = np.random.default_rng(0)
    # 20 subjects x 4 runs; a subject's runs are copies, so they carry one subject's information
    y = np.repeat(rng.integers(0, 2, 20), 4)
    pred = np.repeat(rng.integers(0, 2, 20), 4)
    groups = np.repeat([f"s{i}" for i in range(20)], 4)
    rows = score_classifier(y, pred, n_boot=400)
    subjects = score_classifier(y, pred, n_boot=400, groups=groups)
    once = score_classifier(y[::4], pred[::4], n_boot=400)
    assert subjects["accuracy"][0] == rows["accuracy"][0] == once["accuracy"][0]
    width = {k: r["accuracy"][2] - r["accuracy"][1] for k, r in
             (("rows", rows), ("subjects", subjects), ("once", once))}  # fmt: skip
    assert width["subjects"] > 1.5 * width["rows"]  # runs are not independent draws
    assert width["subjects"] == pytest.approx(width["once"], abs=0.1)
    yr = np.repeat(rng.normal(0, 1, 20), 4)
    pr = yr + np.repeat(rng.normal(0, 1, 20), 4)
    a = score_regression(yr, pr, n_boot=300)["r2"]
    b = score_regression(yr, pr, n_boot=300, groups=groups)["r2"]
    assert a[0] == b[0] and (b[2] - b[1]) > (a[2] - a[1])
    with pytest.raises(FmrilmError, match="groups has 3 entries"):
        score_classifier(y, pred, groups=groups[:3])


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_inner_cv_keeps_each_subjects_rows_in_one_fold(kind):
    from fmrilm.evaluation.baselines import _linear_model

    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i:02d}" for i in range(30)], 4)  # 4 scans per subject
    y = np.tile(["a", "b", "c", "d"], 30) if kind == "classification" else rng.normal(size=120)
    model, inner_cv, what = _linear_model(kind, y, subjects)
    assert inner_cv and "subject-grouped" in what
    est = model.steps[-1][1]
    assert len(est.cv) == 5
    for fit, held in est.cv:
        assert not set(subjects[fit]) & set(subjects[held])
    model.fit(rng.normal(size=(120, 3)), y)  # the precomputed folds index the training rows
    ungrouped = _linear_model(kind, y, None)[2]
    assert "subject-grouped" not in ungrouped


def test_inner_cv_counts_subjects_not_rows():
    from fmrilm.evaluation.baselines import _linear_model

    subjects = np.repeat([f"s{i}" for i in range(8)], 5)  # 4 subjects per class, 20 rows each
    y = np.repeat(["a", "b"], 20)
    _, inner_cv, what = _linear_model("classification", y, subjects)
    assert not inner_cv and "4 subjects" in what
    assert _linear_model("classification", y, None)[1]  # 20 rows per class: CV by rows
    with pytest.raises(FmrilmError, match="train_groups has 3 entries"):
        linear_probe(
            np.zeros((40, 2)), y, np.ones(40, bool) & (np.arange(40) < 30), np.arange(40) >= 30,
            "classification", train_groups=subjects[:3],
        )  # fmt: skip
