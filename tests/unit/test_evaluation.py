import numpy as np
import pandas as pd
import pytest

from fmrilm.data.atlas import Atlas
from fmrilm.data.cohort import Cohort, CohortWriter
from fmrilm.data.preprocess import PreprocessConfig
from fmrilm.data.scan import Scan
from fmrilm.data.simulate import SimulationConfig, simulate_cohort
from fmrilm.data.splits import assign_splits
from fmrilm.errors import FmrilmError
from fmrilm.evaluation.baselines import fc_linear_baseline, fc_vector, majority_baseline
from fmrilm.evaluation.metrics import accuracy, bootstrap_ci, score
from fmrilm.evaluation.oracle import oracle_scores, task_oracle


def _toy_cohort(root, n=60, coupling=0.8, seed=0):
    """Group B has ROIs 0 and 1 coupled; group A has none; 'score' tracks the coupling."""
    rng = np.random.default_rng(seed)
    atlas = Atlas("toy", pd.DataFrame({"name": list("abcdef"), "x": range(6), "y": 0, "z": 0}))
    with CohortWriter(root, preprocessing=PreprocessConfig().to_dict()) as w:
        w.add_atlas(atlas)
        for i in range(n):
            group = "B" if i % 2 else "A"
            c = coupling * rng.uniform(0.5, 1.0) if group == "B" else 0.0
            x = rng.standard_normal((200, 6))
            x[:, 1] = c * x[:, 0] + np.sqrt(1 - c**2) * x[:, 1]
            w.add(
                Scan(
                    x,
                    1.0,
                    subject=f"s{i:03d}",
                    atlas="toy",
                    phenotypes={"group": group, "score": c},
                )
            )
    cohort = Cohort(root)
    cohort.set_splits(assign_splits(cohort.manifest, seed=seed, stratify="group"))
    return cohort


def test_fc_vector_is_fisher_z_upper_triangle():
    x = np.random.default_rng(0).standard_normal((100, 4))
    v = fc_vector(x)
    r = np.corrcoef(x.T)
    assert v.shape == (6,)
    np.testing.assert_allclose(v, np.arctanh(r[np.triu_indices(4, 1)]))


def test_fc_baseline_learns_a_connectivity_difference(tmp_path):
    cohort = _toy_cohort(tmp_path / "c")
    res = fc_linear_baseline(cohort, "group", n_boot=200)
    assert res["kind"] == "classification" and res["n_test"] == 12
    assert res["metrics"]["balanced_accuracy"][0] >= 0.9
    reg = fc_linear_baseline(cohort, "score", n_boot=200)
    assert reg["kind"] == "regression" and reg["metrics"]["r2"][0] > 0.7
    maj = majority_baseline(cohort, "group", n_boot=200)
    assert maj["metrics"]["balanced_accuracy"][0] == 0.5
    # test subjects never appear in training
    train = set(cohort.manifest.query("split != 'test'")["subject"])
    assert not train & set(res["test_subjects"])


def test_fc_baseline_is_at_chance_without_signal(tmp_path):
    cohort = _toy_cohort(tmp_path / "c", n=80, coupling=0.0)
    res = fc_linear_baseline(cohort, "group", n_boot=200)
    assert 0.25 <= res["metrics"]["balanced_accuracy"][0] <= 0.75


def test_missing_label_is_a_clear_error(tmp_path):
    cohort = _toy_cohort(tmp_path / "c", n=10)
    with pytest.raises(FmrilmError, match="no phenotype column 'age'"):
        fc_linear_baseline(cohort, "age")


def test_bootstrap_ci_brackets_the_estimate():
    y = np.array([0, 1] * 50)
    pred = y.copy()
    pred[:20] = 1 - pred[:20]
    value, lo, hi = bootstrap_ci(accuracy, y, pred, n_boot=500)
    assert value == 0.8 and lo < 0.8 < hi and hi - lo < 0.25
    s = score("regression", np.arange(10.0), np.arange(10.0))
    assert s["r2"][0] == 1.0 and s["mae"][0] == 0.0 and s["pearson"][0] == 1.0


def test_oracles_on_a_small_simulated_cohort(tmp_path):
    simulate_cohort(
        tmp_path / "s", SimulationConfig(n_subjects=12, seed=1, n_tasks=2), progress=False
    )
    cohort = Cohort(tmp_path / "s")
    tasks = cohort.manifest[cohort.manifest["paradigm"] == "task"]
    pred = task_oracle(cohort, tasks)
    assert np.mean(pred == tasks["task"].to_numpy()) >= 0.9
    subjects = cohort.manifest["subject"].unique().tolist()
    orc = oracle_scores(cohort, "sex", subjects, n_boot=100)
    assert orc["kind"] == "classification" and 0.5 <= orc["metrics"]["accuracy"][0] <= 1.0
