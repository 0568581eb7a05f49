import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LinearRegression, LogisticRegression

from fmrilm.data.cohort import Cohort
from fmrilm.data.simulate import (
    DEFAULT_SITES,
    DEFAULT_TASKS,
    SimulationConfig,
    draw_subjects,
    hcp_grounding,
    load_truth,
    network_patterns,
    oracle_predict,
    simulate_cohort,
    simulate_scan,
    task_events,
    task_signal,
)
from fmrilm.errors import FmrilmError


@pytest.fixture(scope="module")
def grounding():
    return hcp_grounding()


def _latent(config, df):
    return df[[f"a_{c.name}" for c in config.components]].to_numpy()


def test_oracle_is_at_least_as_good_as_models_fitted_on_the_latents():
    """The Bayes oracle must not lose to a classifier trained on the same true latents."""
    config = SimulationConfig(n_subjects=20000, seed=3)
    df = draw_subjects(config, np.random.default_rng(3))
    a = _latent(config, df)
    orc = oracle_predict(config, a)
    fit, ev = slice(0, 10000), slice(10000, None)
    for label, col in (("sex", "oracle_sex"), ("diagnosis", "oracle_diagnosis")):
        y = df[label].to_numpy()
        lr = LogisticRegression(max_iter=2000).fit(a[fit], y[fit])
        acc_lr = np.mean(lr.predict(a[ev]) == y[ev])
        acc_oracle = np.mean(orc[col].to_numpy()[ev] == y[ev])
        assert acc_oracle >= acc_lr - 0.01, (label, acc_oracle, acc_lr)
        assert 0.75 < acc_oracle < 0.99  # learnable, not trivial
    for label, col in (("age", "oracle_age"), ("fluid_intelligence", "oracle_fluid_intelligence")):
        y = df[label].to_numpy()
        # a linear model on the latents can also use squared terms of the discrete mixture; give it those
        feats = np.column_stack([a, a**2])
        r2_lin = LinearRegression().fit(feats[fit], y[fit]).score(feats[ev], y[ev])
        resid = y[ev] - orc[col].to_numpy()[ev]
        r2_oracle = 1 - resid.var() / y[ev].var()
        assert r2_oracle >= r2_lin - 0.01, (label, r2_oracle, r2_lin)


def test_oracle_probabilities_are_calibrated():
    config = SimulationConfig(n_subjects=20000, seed=5)
    df = draw_subjects(config, np.random.default_rng(5))
    p = oracle_predict(config, _latent(config, df))["oracle_p_male"].to_numpy()
    male = (df["sex"] == "M").to_numpy()
    for lo in (0.1, 0.3, 0.5, 0.7):
        sel = (p >= lo) & (p < lo + 0.2)
        assert abs(male[sel].mean() - p[sel].mean()) < 0.05


def test_simulated_cohort_layout_and_determinism(tmp_path):
    config = SimulationConfig(n_subjects=6, seed=11, n_tasks=1)
    rep = simulate_cohort(tmp_path / "a", config, progress=False)
    assert rep["scans"] == 12
    c = Cohort(tmp_path / "a")
    m = c.manifest
    assert sorted(m["paradigm"].value_counts().to_dict().items()) == [("rest", 6), ("task", 6)]
    site_tr = {s.name: s.tr for s in DEFAULT_SITES}
    assert all(site_tr[s] == t for s, t in zip(m["site"], m["tr"], strict=True))
    assert set(c.phenotype_columns) == {"sex", "age", "fluid_intelligence", "diagnosis"}
    task_scan = m[m["paradigm"] == "task"].iloc[0]
    ev = c.events(task_scan["scan_id"])
    assert (
        ev is not None and len(ev) >= 3 and set(ev.columns) == {"onset", "duration", "trial_type"}
    )
    assert m["qc_fd_mean"].gt(0).all() and m["qc_tsnr"].between(20, 200).all()
    truth = load_truth(tmp_path / "a")
    assert {"oracle_sex", "oracle_age", "a_default_mode"} <= set(truth.columns)
    merged = m.drop_duplicates("subject").merge(truth, on="subject", suffixes=("", "_truth"))
    assert (merged["sex"] == merged["sex_truth"]).all()
    # same seed, same data; another seed, other data
    simulate_cohort(tmp_path / "b", config, progress=False)
    simulate_cohort(
        tmp_path / "c", SimulationConfig(n_subjects=6, seed=12, n_tasks=1), progress=False
    )
    b, other = Cohort(tmp_path / "b"), Cohort(tmp_path / "c")
    sid = m["scan_id"].iloc[0]
    np.testing.assert_array_equal(c.series(sid), b.series(sid))
    assert not np.allclose(c.series(0)[:50], other.series(0)[:50])


def _within(series, mask):
    fc = np.corrcoef(np.asarray(series).T)
    sub = fc[np.ix_(mask, mask)]
    return sub[np.triu_indices_from(sub, k=1)].mean()


def test_label_effects_show_up_in_connectivity(tmp_path):
    config = SimulationConfig.preset("easy", n_subjects=80, seed=2, n_tasks=0)
    simulate_cohort(tmp_path / "s", config, progress=False)
    c = Cohort(tmp_path / "s")
    nets = np.array(c.atlas("aal2-cortex80").networks)
    m = c.manifest
    smn = np.array([_within(c.series(s), nets == "Somatomotor") for s in m["scan_id"]])
    dmn = np.array([_within(c.series(s), nets == "Default") for s in m["scan_id"]])
    # sites differ in noise, which shifts every correlation: compare within sites
    smn = smn - m.assign(v=smn).groupby("site")["v"].transform("mean").to_numpy()
    dmn = dmn - m.assign(v=dmn).groupby("site")["v"].transform("mean").to_numpy()
    male = (m["sex"] == "M").to_numpy()
    assert smn[male].mean() > smn[~male].mean()
    assert stats.ttest_ind(smn[male], smn[~male]).pvalue < 0.01
    dx_a, ctrl = (
        (m["diagnosis"] == "disorder_A").to_numpy(),
        (m["diagnosis"] == "control").to_numpy(),
    )
    assert dmn[dx_a].mean() < dmn[ctrl].mean()
    assert stats.ttest_ind(dmn[dx_a], dmn[ctrl]).pvalue < 0.01


def test_task_activation_lands_in_the_planned_regions(grounding):
    config = SimulationConfig()
    V = network_patterns(config, grounding.atlas)
    motor = DEFAULT_TASKS[0]
    site = DEFAULT_SITES[0]
    raw, events, _ = simulate_scan(
        np.random.default_rng(0), grounding, V, np.ones(V.shape[1]), site, 216.0, motor
    )
    assert list(events.columns) == ["onset", "duration", "trial_type"]
    x = (raw - raw.mean(0)) / raw.std(0)
    only_left = events[events["trial_type"] == "left_hand"]
    reg = task_signal(motor, only_left, len(x), site.tr, grounding.atlas)[
        :, grounding.atlas.names.index("Precentral_R")
    ]
    names = grounding.atlas.names
    r_target = np.corrcoef(reg, x[:, names.index("Precentral_R")])[0, 1]
    r_control = np.corrcoef(reg, x[:, names.index("Calcarine_L")])[0, 1]
    assert r_target > 0.4 and abs(r_control) < 0.25


def test_task_events_fit_in_the_run():
    ev = task_events(DEFAULT_TASKS[1], 216.0)
    assert (ev["onset"] + ev["duration"] <= 216.0).all()
    assert set(ev["trial_type"]) == {"twoback", "zeroback"}


def test_bad_simulation_settings():
    with pytest.raises(FmrilmError, match="--subjects must be at least 1"):
        SimulationConfig(n_subjects=0)
    with pytest.raises(FmrilmError, match="--tasks must be between 0 and 4"):
        SimulationConfig(n_tasks=9)
    with pytest.raises(FmrilmError, match="unknown simulation preset"):
        SimulationConfig.preset("extreme")
