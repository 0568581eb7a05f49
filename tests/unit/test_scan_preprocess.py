import numpy as np
import pandas as pd
import pytest

from fmrilm.data.preprocess import PreprocessConfig, preprocess, resample, scale, tsnr
from fmrilm.data.scan import Scan, check_series
from fmrilm.errors import FmrilmError


def _series(t=100, r=5, seed=0):
    return np.random.default_rng(seed).standard_normal((t, r)).astype(np.float32)


def test_scan_id_is_bids_like_and_validates_labels():
    s = Scan(_series(), 2.0, subject="01", session="A", run="2", task="motor", paradigm="task")
    assert s.scan_id == "sub-01_ses-A_task-motor_run-2"
    assert (s.n_frames, s.n_rois) == (100, 5)
    assert s.data.dtype == np.float32
    with pytest.raises(FmrilmError, match="subject='0-1'|letters and digits"):
        Scan(_series(), 2.0, subject="0-1")
    with pytest.raises(FmrilmError, match="TR must be a positive"):
        Scan(_series(), -1.0, subject="01")
    with pytest.raises(FmrilmError, match="events table lacks columns"):
        Scan(_series(), 2.0, subject="01", events=pd.DataFrame({"onset": [1.0]}))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda x: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x),
            "NaN/Inf values \\(first at frame 1, ROI 2",
        ),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.inf, x), "NaN/Inf"),
        (
            lambda x: np.column_stack([x[:, :2], np.full(len(x), 3.0), x[:, 3:]]),
            "1 constant \\(zero-variance\\) ROIs: 2",
        ),
        (lambda x: x.T, "looks transposed"),
        (lambda x: x[:, :4], "has 4 ROI columns but the atlas has 5"),
        (lambda x: x[:3], "only 3 frames"),
        (lambda x: x[..., None], "expected a 2-D"),
    ],
)
def test_check_series_rejects_bad_input(make, message):
    with pytest.raises(FmrilmError, match=message):
        check_series(make(_series()), what="f.npy", n_rois=5, min_frames=10)


def test_check_series_names_rois():
    x = _series()
    x[:, 1] = 1.0
    with pytest.raises(FmrilmError, match=r"1 \(B\)"):
        check_series(x, what="f", roi_names=list("ABCDE"))


def test_robust_scaling_gives_zero_median_unit_iqr():
    x = _series() * 7 + 100
    y = scale(x, "robust")
    q25, med, q75 = np.percentile(y, [25, 50, 75], axis=0)
    np.testing.assert_allclose(med, 0, atol=1e-5)
    np.testing.assert_allclose(q75 - q25, 1, atol=1e-5)
    z = scale(x, "zscore")
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-5)


def test_resample_preserves_a_slow_sine_and_duration():
    tr, target = 0.72, 2.0
    t = np.arange(1000) * tr
    x = np.sin(2 * np.pi * 0.03 * t)[:, None]
    y = resample(x, tr, target)
    assert y.shape[0] == int(1000 * tr / target)
    t2 = np.arange(y.shape[0]) * target
    inner = slice(10, -10)  # filter edges
    np.testing.assert_allclose(y[inner, 0], np.sin(2 * np.pi * 0.03 * t2)[inner], atol=0.05)


def test_tsnr_on_raw_units_and_nan_when_demeaned():
    x = _series() + 50.0
    assert 40 < tsnr(x) < 60
    assert np.isnan(tsnr(_series() - _series().mean(axis=0)))


def test_preprocess_removes_drift_and_reports_qc():
    rng = np.random.default_rng(1)
    t = np.arange(400)
    raw = 1000 + 0.5 * t[:, None] + rng.standard_normal((400, 3)) * 10
    out, tr, qc = preprocess(raw, 1.0, PreprocessConfig(), what="x")
    assert tr == 1.0 and out.shape == (400, 3)
    # the linear drift is gone: no correlation with time left
    assert abs(np.corrcoef(t, out[:, 0])[0, 1]) < 0.1
    assert 95 < qc["tsnr"] < 125  # mean ~1100 / noise sd 10 (drift removed first)
    out2, tr2, _ = preprocess(raw, 1.0, PreprocessConfig(target_tr=2.0), what="x")
    assert tr2 == 2.0 and out2.shape[0] == 200


def test_preprocess_errors_name_the_problem():
    with pytest.raises(FmrilmError, match="unknown TR"):
        preprocess(_series(), None, PreprocessConfig(), what="x")
    with pytest.raises(FmrilmError, match="only 12 frames at TR 4 s"):
        preprocess(_series(48), 1.0, PreprocessConfig(target_tr=4.0), what="x")
    with pytest.raises(FmrilmError, match="scaling must be"):
        PreprocessConfig(scaling="minmax")
    with pytest.raises(FmrilmError, match="high_pass .* must be below low_pass"):
        PreprocessConfig(high_pass=0.1, low_pass=0.05)
    with pytest.raises(FmrilmError, match="unknown preprocessing settings"):
        PreprocessConfig.from_dict({"detrend": True, "smoothing": 6})


@pytest.mark.parametrize(
    ("tr", "high", "low"), [(0.72, 0.008, None), (2.0, 0.01, 0.1), (1.0, None, 0.2)]
)
def test_fast_filter_path_equals_nilearn_clean(tr, high, low):
    from nilearn import signal

    from fmrilm.data.preprocess import clean

    x = np.random.default_rng(0).standard_normal((300, 7)).cumsum(axis=0)
    ours = clean(x, tr, PreprocessConfig(high_pass=high, low_pass=low))
    ref = signal.clean(
        x,
        detrend=True,
        standardize=None,
        high_pass=high,
        low_pass=low,
        t_r=tr,
        filter="butterworth",
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
