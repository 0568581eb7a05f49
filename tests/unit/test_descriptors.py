"""Descriptor families (spectral, graph, gradients, dynamics, task) on inputs with known answers."""

from __future__ import annotations

import math
import re

import bct
import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy.signal import periodogram

from fmrilm.corpus.descriptors import Context, dynamics, families, gradients, graph, spectral, task
from fmrilm.corpus.descriptors.base import AtlasNorms
from fmrilm.data import simulate
from fmrilm.data.cohort import Cohort
from fmrilm.data.preprocess import PreprocessConfig, preprocess
from fmrilm.errors import FmrilmError


def make_ctx(series, tr=1.0, networks=None, events=None, qc=None, norms=None) -> Context:
    series = np.asarray(series, dtype=np.float32)
    n_rois = series.shape[1]
    return Context(
        scan_id="sub-x_task-rest",
        series=series,
        tr=tr,
        roi_names=[f"ROI{i:03d}" for i in range(n_rois)],
        networks=list(networks) if networks is not None else [""] * n_rois,
        coords=np.zeros((n_rois, 3)),
        events=events,
        qc=qc or {},
        norms=norms,
    )


def values(descs) -> dict:
    return {d.name: d.value for d in descs}


def two_blocks(rng, n_frames=600, size=15, loading=1.0):
    """Two independent communities: each block shares one latent signal; (n_frames, 2 size)."""
    latent = rng.standard_normal((n_frames, 2))
    x = rng.standard_normal((n_frames, 2 * size))
    x[:, :size] += loading * latent[:, :1]
    x[:, size:] += loading * latent[:, 1:]
    return x


# -- spectral ----------------------------------------------------------------------------------


def test_spectra_match_scipy_periodogram_and_direct_autocorrelation():
    rng = np.random.default_rng(0)
    for n in (120, 121):  # even and odd lengths (the Nyquist bin differs)
        x = rng.standard_normal((n, 4)) + 5.0
        f, psd, acf = spectral.spectra(x, 0.8)
        f_ref, psd_ref = periodogram(x, fs=1 / 0.8, axis=0)
        np.testing.assert_allclose(f, f_ref)
        np.testing.assert_allclose(psd, psd_ref, rtol=1e-10, atol=1e-12)
        xc = x[:, 2] - x[:, 2].mean()
        direct = np.array([xc[: n - k] @ xc[k:] for k in range(n)]) / (xc @ xc)
        np.testing.assert_allclose(acf[:, 2], direct, atol=1e-12)


def test_falff_peaks_in_the_network_carrying_a_0_05_hz_rhythm_and_is_the_band_fraction_for_noise():
    rng = np.random.default_rng(1)
    tr, n = 1.0, 1200
    nets = ["Visual"] * 6 + ["Default"] * 6 + ["Limbic"] * 6
    x = rng.standard_normal((n, 18))
    x[:, :6] += 2.0 * np.sin(2 * np.pi * 0.05 * np.arange(n) * tr)[:, None]
    v = values(spectral.compute(make_ctx(x, tr, nets)))
    # the sine puts all its power (variance 2) in one bin; amplitudes are summed, so fALFF gains
    # sqrt(PSD_peak) = sqrt(2 n TR) in the band and the total:
    # (84 band bins x 1.2533 + 49) / (601 bins x 1.2533 + 49) = 0.192
    assert v["spectral.falff.Visual"] == pytest.approx(0.192, abs=0.01)
    assert v["spectral.falff.Visual"] > 1.25 * max(
        v["spectral.falff.Default"], v["spectral.falff.Limbic"]
    )
    assert v["spectral.alff.Visual"] > v["spectral.alff.Default"]
    # white noise: a flat amplitude spectrum, so fALFF = share of bins in 0.01-0.08 Hz
    band_share = 0.07 / (0.5 / tr)
    assert v["spectral.falff.Default"] == pytest.approx(band_share, abs=0.015)
    assert v["spectral.falff.Limbic"] == pytest.approx(band_share, abs=0.015)
    # unit-variance white noise has PSD 2 TR; E[sqrt(2 TR E)] with E ~ Exp(1) = sqrt(2 TR) Gamma(1.5)
    assert v["spectral.alff.Default"] == pytest.approx(math.sqrt(2 * tr) * math.gamma(1.5), rel=0.1)
    assert v["spectral.peak_frequency"] == pytest.approx(0.05, abs=0.003)
    assert "spectral.note" not in v


def test_timescale_of_an_ar1_process_matches_theory():
    rng = np.random.default_rng(2)
    phi, tr, n, rois = 0.8, 2.0, 3000, 24
    e = rng.standard_normal((n, rois))
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    v = values(spectral.compute(make_ctx(x, tr)))
    assert v["spectral.timescale_s"] == pytest.approx(tr * phi / (1 - phi), rel=0.15)
    # white noise decorrelates within one frame
    w = values(spectral.compute(make_ctx(rng.standard_normal((n, rois)), tr)))
    assert w["spectral.timescale_s"] < 0.1 * tr


def test_global_signal_sd_and_quality():
    rng = np.random.default_rng(3)
    common = rng.standard_normal((500, 1))
    x = common + 0.1 * rng.standard_normal((500, 30))
    v = values(spectral.compute(make_ctx(x)))
    assert v["spectral.global_signal_sd"] == pytest.approx(float(x.mean(axis=1).std()), rel=1e-5)
    q = values(spectral.compute_quality(make_ctx(x, tr=0.5, qc={"tsnr": 61.5, "fd_mean": 0.21})))
    assert q == {
        "quality.n_frames": 500,
        "quality.duration_s": 250.0,
        "quality.tsnr": 61.5,
        "quality.fd_mean": 0.21,
    }
    q = values(spectral.compute_quality(make_ctx(x, qc={"tsnr": float("nan")})))
    assert "quality.tsnr" not in q and "quality.fd_mean" not in q


# -- graph ---------------------------------------------------------------------------------------


def test_efficiency_equals_bctpy_on_random_graphs():
    rng = np.random.default_rng(4)
    for n, p in ((12, 0.3), (25, 0.2), (30, 0.6)):
        W = np.triu(rng.uniform(0.05, 1.0, (n, n)) * (rng.random((n, n)) < p), 1)
        W = W + W.T
        W[0, :] = W[:, 0] = 0.0  # an isolated node: infinite distances count as 0
        assert graph.global_efficiency(W) == pytest.approx(bct.efficiency_wei(W), rel=1e-12)


def test_proportional_threshold_keeps_the_strongest_positive_fifth():
    rng = np.random.default_rng(5)
    fc = np.corrcoef(rng.standard_normal((50, 20)).T)
    np.fill_diagonal(fc, 0)
    W = graph.threshold_proportional(fc)
    iu = np.triu_indices(20, 1)
    kept = W[iu] > 0
    n_keep = round(0.2 * iu[0].size)
    expected = min(n_keep, int((fc[iu] > 0).sum()))
    assert kept.sum() == expected
    assert np.allclose(W, W.T) and W.min() >= 0
    assert fc[iu][kept].min() >= np.sort(fc[iu])[-n_keep]


def test_two_independent_communities_give_two_modules():
    rng = np.random.default_rng(6)
    x = two_blocks(rng)
    nets = ["Visual"] * 15 + ["Default"] * 15
    v = values(graph.compute(make_ctx(x, networks=nets)))
    assert v["graph.modularity"] > 0.3
    assert v["graph.n_modules"] == 2
    assert len(v["graph.hubs"]) == 3 and all(h.startswith("ROI") for h in v["graph.hubs"])
    assert set(v["graph.hub_networks"]) <= {"Visual", "Default"}
    assert 0 < v["graph.global_efficiency"] < 1 and 0 < v["graph.clustering"] < 1
    # modularity agrees with networkx on the same partition
    W = graph.threshold_proportional(np.corrcoef(x.T) - np.eye(30))
    q, communities = graph.louvain_modules(W)
    G = nx.from_numpy_array(W)
    assert q == pytest.approx(nx.community.modularity(G, communities, weight="weight"))
    # the modules are the planted blocks; ROIs left without any top-20 % edge are singletons
    modules = [sorted(c) for c in communities if len(c) >= 2]
    assert sorted(set(m) <= set(range(15)) or set(m) <= set(range(15, 30)) for m in modules) == [
        True,
        True,
    ]


# -- gradients ----------------------------------------------------------------------------------


def continuum(rng, n_rois=40, n_frames=800):
    """ROIs along a line p in [0, 1]: each loads on 8 signals placed along the line with Gaussian
    weights, so FC decays with |p_i - p_j| and the principal gradient is p (up to sign)."""
    p = np.linspace(0, 1, n_rois)
    centres = np.linspace(0, 1, 8)
    load = np.exp(-((p[:, None] - centres[None, :]) ** 2) / (2 * 0.12**2))  # (n_rois, 8)
    latent = rng.standard_normal((n_frames, 8))
    return p, latent @ load.T + 0.3 * rng.standard_normal((n_frames, n_rois))


def test_principal_gradient_separates_two_planted_groups():
    rng = np.random.default_rng(7)
    p, x = continuum(rng)
    nets = ["Visual"] * 20 + ["Default"] * 20
    v = values(gradients.compute(make_ctx(x, networks=nets)))
    assert {v["gradients.anchor_low"], v["gradients.anchor_high"]} == {"Visual", "Default"}
    assert 0 < v["gradients.explained"] <= 1 and v["gradients.principal_range"] > 0
    emb, lambdas = gradients.diffusion_map(gradients.cosine_affinity(np.corrcoef(x.T)))
    assert abs(np.corrcoef(emb[:, 0], p)[0, 1]) > 0.9  # gradient 1 follows the planted axis
    assert np.all(np.diff(lambdas) <= 1e-12)  # descending
    # orientation: the largest-magnitude value of gradient 1 is positive
    assert emb[np.abs(emb[:, 0]).argmax(), 0] > 0


def test_dense_and_arpack_eigensolvers_agree(monkeypatch):
    rng = np.random.default_rng(8)
    _, x = continuum(rng, n_rois=60)
    aff = gradients.cosine_affinity(np.corrcoef(x.T))
    dense = gradients.diffusion_map(aff)
    monkeypatch.setattr(gradients, "DENSE_MAX_ROIS", 10)
    sparse = gradients.diffusion_map(aff)
    np.testing.assert_allclose(sparse[1], dense[1], rtol=1e-8)
    np.testing.assert_allclose(sparse[0][:, :3], dense[0][:, :3], rtol=1e-6, atol=1e-8)


def test_disconnected_affinity_gives_a_note_not_a_gradient():
    rng = np.random.default_rng(9)
    # independent blocks with exactly zero cross-correlation: no path between them
    x = np.zeros((300, 20))
    x[:, :10] = rng.standard_normal((300, 1)) + 0.3 * rng.standard_normal((300, 10))
    fc = np.eye(20)
    fc[:10, :10] = np.corrcoef(x[:, :10].T)
    fc[10:, 10:] = fc[:10, :10]
    ctx = make_ctx(rng.standard_normal((300, 20)), networks=["Visual"] * 20)
    ctx._fc = fc  # the context caches its FC
    assert values(gradients.compute(ctx)) == {
        "gradients.note": "the FC affinity graph is disconnected; gradients undefined"
    }


# -- dynamics ------------------------------------------------------------------------------------


def switching(rng, n_frames=600, switch=True):
    """10 ROIs, TR 1 s; ROIs 0-4 share a signal in the first half, ROIs 5-9 in the second."""
    x = rng.standard_normal((n_frames, 10))
    half = n_frames // 2
    shared = 1.5 * rng.standard_normal((n_frames, 1))
    x[:half, :5] += shared[:half]
    if switch:
        x[half:, 5:] += shared[half:]
    else:
        x[half:, :5] += shared[half:]
    return x


def test_window_fc_matches_per_window_correlations():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((200, 6))
    w = dynamics.window_fc(x, tr=2.0)  # 30-frame windows, step 8 frames
    starts = range(0, 200 - 30 + 1, 8)
    iu = np.triu_indices(6, 1)
    ref = np.array([np.arctanh(np.corrcoef(x[s : s + 30].T)[iu]) for s in starts])
    np.testing.assert_allclose(w, ref, atol=1e-5)
    assert dynamics.window_fc(x[:20], tr=2.0).shape == (0, 15)


def test_switching_coupling_is_more_variable_and_gives_two_equal_states():
    rng = np.random.default_rng(11)
    x_switch, x_stat = switching(rng), switching(rng, switch=False)
    v_switch = values(dynamics.compute(make_ctx(x_switch)))
    v_stat = values(dynamics.compute(make_ctx(x_stat)))
    assert v_switch["dynamics.fc_variability"] > 1.3 * v_stat["dynamics.fc_variability"]
    assert "dynamics.occupancy" not in v_switch  # no states without norms

    windows = dynamics.window_fc(x_switch, tr=1.0)
    states = dynamics.fit_states(windows, k=2)
    assert states.shape == (2, 45)
    assert np.all(np.diff(states.mean(axis=1)) <= 0)  # ordered by decreasing mean FC
    np.testing.assert_array_equal(states, dynamics.fit_states(windows, k=2))  # deterministic

    v = values(dynamics.compute(make_ctx(x_switch, norms=AtlasNorms(states=states))))
    n_win, step_s = v["dynamics.n_windows"], 15.0
    assert n_win == 1 + (600 - 60) // 15
    assert sorted(v["dynamics.occupancy"]) == pytest.approx([0.5, 0.5], abs=0.06)
    assert v["dynamics.dominant_state"] in (1, 2)
    # one switch: two runs of windows, one transition
    assert v["dynamics.mean_dwell_s"] == pytest.approx(n_win * step_s / 2)
    assert v["dynamics.transitions_per_min"] == pytest.approx(60 / (n_win * step_s))


def test_short_scan_gives_a_dynamics_note_and_bad_states_are_refused():
    rng = np.random.default_rng(12)
    short = make_ctx(rng.standard_normal((100, 5)), tr=1.0)  # 100 s < two 60 s windows
    (d,) = dynamics.compute(short)
    assert (d.name, d.value) == (
        "dynamics.note",
        "scan shorter than two 60 s windows; dynamic FC omitted",
    )
    ctx = make_ctx(rng.standard_normal((200, 5)), norms=AtlasNorms(states=np.zeros((4, 3))))
    with pytest.raises(FmrilmError, match="norms were fitted on another atlas"):
        dynamics.compute(ctx)
    with pytest.raises(FmrilmError, match="at least k=4 windows"):
        dynamics.fit_states(np.zeros((3, 10)))


# -- task ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grounding():
    return simulate.hcp_grounding()


def test_motor_task_responses_are_strongest_in_somatomotor(grounding):
    config = simulate.SimulationConfig()
    V = simulate.network_patterns(config, grounding.atlas)
    motor, site = simulate.DEFAULT_TASKS[0], simulate.DEFAULT_SITES[0]
    raw, events, _ = simulate.simulate_scan(
        np.random.default_rng(0), grounding, V, np.ones(V.shape[1]), site, 216.0, motor
    )
    x, tr, _ = preprocess(raw, site.tr, PreprocessConfig(), what="test")
    atlas = grounding.atlas
    ctx = Context("s", x, tr, atlas.names, atlas.networks, atlas.coords, events)
    descs = task.compute(ctx)
    v = values(descs)
    assert v["task.strongest_networks"][0] == "Somatomotor"
    assert v["task.n_conditions"] == 2
    assert v["task.response.Somatomotor"] > 2
    assert set(v) == {
        "task.n_conditions",
        "task.strongest_networks",
        *(f"task.response.{n}" for n in ctx.network_index()),
    }
    # condition and task names never leak into a descriptor ("Somatomotor" is a network)
    text = repr([d.to_dict() for d in descs]).lower()
    for label in ("left_hand", "right_hand", "hand", "motor"):
        assert not re.search(rf"\b{label}\b", text), label
    # no events, or an empty table: no task descriptors at all
    assert task.compute(Context("s", x, tr, atlas.names, atlas.networks, atlas.coords)) == []
    empty = events.iloc[:0]
    assert task.compute(Context("s", x, tr, atlas.names, atlas.networks, atlas.coords, empty)) == []


def test_task_regression_recovers_a_planted_response():
    rng = np.random.default_rng(13)
    tr, n = 1.0, 300
    events = pd.DataFrame(
        {"onset": np.arange(10.0, 280.0, 40.0), "duration": 15.0, "trial_type": "cond"}
    )
    X = task.design_matrix(events, n, tr)
    assert X.shape == (n, 3)
    x = rng.standard_normal((n, 9))
    x[:, :3] += 2.0 * X[:, :1] / X[:, 0].max()
    v = values(task.compute(make_ctx(x, tr, ["Default"] * 3 + ["Visual"] * 6, events)))
    assert v["task.strongest_networks"] == ["Default", "Visual"]
    assert v["task.response.Default"] > 10 and abs(v["task.response.Visual"]) < 4
    # events after the end of the scan are not a condition
    late = pd.concat(
        [events, pd.DataFrame({"onset": [900.0], "duration": [5.0], "trial_type": ["x"]})]
    )
    assert values(task.compute(make_ctx(x, tr, ["Default"] * 9, late)))["task.n_conditions"] == 1


# -- bad input and whole records -------------------------------------------------------------


def test_without_network_labels_network_descriptors_become_notes():
    rng = np.random.default_rng(14)
    _, x = continuum(rng, n_frames=300)
    events = pd.DataFrame({"onset": [20.0, 120.0], "duration": [20.0, 20.0], "trial_type": "a"})
    ctx = make_ctx(x, tr=1.0, events=events)
    for family, fn in (
        ("spectral", spectral.compute),
        ("graph", graph.compute),
        ("gradients", gradients.compute),
        ("task", task.compute),
    ):
        v = values(fn(ctx))
        assert (
            v[f"{family}.note"] == "no ROI has a network label; network-level descriptors omitted"
        )
        assert not [n for n in v if n.count(".") > 1], v  # no per-network names
    v = values(graph.compute(ctx))
    assert "graph.hub_networks" not in v and "graph.modularity" in v
    assert set(values(gradients.compute(ctx))) == {
        "gradients.principal_range",
        "gradients.explained",
        "gradients.note",
    }


def _finite(value) -> bool:
    if isinstance(value, str):
        return bool(value)
    if isinstance(value, list):
        return bool(value) and all(_finite(v) for v in value)
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_family_gives_finite_values_on_a_simulated_cohort(tmp_path, grounding, monkeypatch):
    monkeypatch.setattr(simulate, "hcp_grounding", lambda: grounding)  # load the HCP data once
    simulate.simulate_cohort(
        tmp_path / "c", simulate.SimulationConfig(n_subjects=2, n_tasks=1, seed=1), progress=False
    )
    cohort = Cohort(tmp_path / "c")
    atlas = cohort.atlas(cohort.manifest["atlas"].iloc[0])
    seen = set()
    for i in range(len(cohort)):
        scan = cohort.scan(i)
        ctx = Context(
            scan.scan_id,
            scan.data,
            scan.tr,
            atlas.names,
            atlas.networks,
            atlas.coords,
            scan.events,
            scan.qc,
        )
        for family, fn in families().items():
            for d in fn(ctx):
                assert d.family == family and d.provenance, d
                assert d.name.startswith((f"{family}.", "fc.")), d.name
                assert _finite(d.value), (scan.scan_id, d.name, d.value)
                seen.add(family)
    assert seen == {"quality", "connectivity", "graph", "gradients", "spectral", "dynamics", "task"}
