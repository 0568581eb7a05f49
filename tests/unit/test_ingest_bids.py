"""BIDS: raw datasets, fMRIPrep derivatives (file choice, confounds) and XCP-D time series."""

from __future__ import annotations

import gzip
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from _ingest_data import folder_digest, write_painted

from fmrilm.cli import main
from fmrilm.data.atlas import load_atlas
from fmrilm.data.cohort import Cohort
from fmrilm.data.ingest import ImportOptions, bids, discover, import_source
from fmrilm.errors import FmrilmError

N = 40  # frames
MNI = "space-MNI152NLin2009cAsym"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _json(path, obj):
    _write(path, json.dumps(obj))


def make_raw(root):
    """Two subjects, a session, a task run with events; TR only in sidecars."""
    _json(root / "dataset_description.json", {"Name": "toy", "BIDSVersion": "1.9.0"})
    _write(
        root / "participants.tsv",
        "participant_id\tage\tsex\tsite\nsub-01\t25\tF\tA\nsub-02\tn/a\tM\tB\n",
    )
    _json(root / "task-rest_bold.json", {"RepetitionTime": 2.0})
    func1 = root / "sub-01" / "func"
    write_painted(func1 / "sub-01_task-rest_bold.nii.gz", n_frames=N, tr=None, seed=1)
    write_painted(func1 / "sub-01_task-nback_run-1_bold.nii.gz", n_frames=N, tr=None, seed=2)
    _json(func1 / "sub-01_task-nback_run-1_bold.json", {"RepetitionTime": 1.5})
    _write(
        func1 / "sub-01_task-nback_run-1_events.tsv",
        "onset\tduration\ttrial_type\n0\t10\t2back\n20\tn/a\t0back\n",
    )
    func2 = root / "sub-02" / "ses-1" / "func"
    write_painted(func2 / "sub-02_ses-1_task-rest_bold.nii.gz", n_frames=N, tr=None, seed=3)
    return root


def confounds_table(n, seed=0):
    rng = np.random.default_rng(seed)
    cols = {}
    for name in [f"{k}_{a}" for k in ("trans", "rot") for a in "xyz"]:
        x = 0.05 * rng.standard_normal(n).cumsum()
        d = np.r_[np.nan, np.diff(x)]
        cols.update({name: x, f"{name}_derivative1": d, f"{name}_power2": x**2})
        cols[f"{name}_derivative1_power2"] = d**2
    cols["white_matter"], cols["csf"], cols["global_signal"] = 500 + rng.standard_normal((3, n))
    cols["framewise_displacement"] = np.r_[np.nan, np.abs(rng.normal(0.15, 0.05, n - 1))]
    t = np.arange(n)
    for i in range(3):
        cols[f"cosine{i:02d}"] = np.cos(np.pi * (i + 1) * (t + 0.5) / n)
    for i in range(2):  # the first two frames are non-steady-state
        cols[f"non_steady_state_outlier{i:02d}"] = (t == i).astype(float)
    return pd.DataFrame(cols)


def make_fmriprep(raw, with_json=True, rows=N):
    """fMRIPrep derivatives of sub-01's n-back run, inside RAW/derivatives/fmriprep."""
    root = raw / "derivatives" / "fmriprep"
    _json(root / "dataset_description.json", {"Name": "fMRIPrep", "DatasetType": "derivative"})
    func = root / "sub-01" / "func"
    stem = "sub-01_task-nback_run-1"
    series = write_painted(func / f"{stem}_{MNI}_desc-preproc_bold.nii.gz", n_frames=N, seed=4)
    # a T1w-space output far from MNI space: choosing it would fail the overlap check
    write_painted(
        func / f"{stem}_space-T1w_desc-preproc_bold.nii.gz", n_frames=N, shift_mm=(2000, 0, 0)
    )
    table = confounds_table(rows)
    confounds = func / f"{stem}_desc-confounds_timeseries.tsv"
    table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    if with_json:
        _json(confounds.with_suffix(".json"), {"trans_x": {"Method": "test"}})
    return root, series, table


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_raw(tmp_path_factory.mktemp("bids") / "raw")


@pytest.fixture(scope="module")
def fmriprep(raw):
    return make_fmriprep(raw)


def test_raw_bids_runs_and_metadata(raw):
    runs = {r.scan_id: r for r in discover(str(raw), ImportOptions())}
    assert sorted(runs) == [
        "sub-01_task-nback_run-1",
        "sub-01_task-rest",
        "sub-02_ses-1_task-rest",
    ]
    nback, rest = runs["sub-01_task-nback_run-1"], runs["sub-01_task-rest"]
    # run-level sidecar beats the dataset-level task-rest_bold.json; rest inherits from the root
    assert nback.tr == 1.5 and rest.tr == 2.0 and runs["sub-02_ses-1_task-rest"].tr == 2.0
    assert nback.paradigm == "task" and rest.paradigm == "rest"
    assert nback.events.to_dict("list") == {
        "onset": [0.0, 20.0],
        "duration": [10.0, 0.0],
        "trial_type": ["2back", "0back"],
    }
    assert rest.events is None
    assert rest.phenotypes == {"age": 25.0, "sex": "F"} and rest.site == "A"
    sub02 = runs["sub-02_ses-1_task-rest"]
    assert sub02.phenotypes == {"sex": "M"} and sub02.site == "B"  # n/a age left out
    assert sub02.session == "1"


def test_raw_bids_parcellation(raw):
    run = next(r for r in discover(str(raw), ImportOptions()) if r.subject == "02")
    loaded = run.load()
    from _ingest_data import painted_series

    series = painted_series(N, seed=3)
    for column, row in enumerate(loaded.atlas.rois.itertuples()):
        assert np.corrcoef(loaded.data[:, column], series[int(row.label)])[0, 1] > 0.95
    assert loaded.confounds is None and loaded.qc == {}


def test_fmriprep_choice_confounds_and_raw_metadata(fmriprep, raw):
    root, series, table = fmriprep
    (run,) = discover(str(root), ImportOptions())
    assert run.source.endswith(f"sub-01_task-nback_run-1_{MNI}_desc-preproc_bold.nii.gz")
    assert run.tr == 1.5  # from the raw dataset's sidecar
    assert run.events["trial_type"].tolist() == ["2back", "0back"]  # raw dataset's events
    assert run.phenotypes == {"age": 25.0, "sex": "F"}  # raw dataset's participants.tsv
    loaded = run.load()
    assert loaded.confounds.shape == (N, 24 + 3 + 2)  # motion full, cosines, wm + csf
    np.testing.assert_array_equal(loaded.sample_mask, np.arange(2, N))
    assert loaded.qc["fd_mean"] == pytest.approx(np.nanmean(table["framewise_displacement"]))
    precentral = loaded.atlas.names.index("Precentral_L")
    assert np.corrcoef(loaded.data[:, precentral], series[1])[0, 1] > 0.95


def test_plain_confounds_match_nilearn(fmriprep):
    from nilearn.interfaces.fmriprep import load_confounds

    root, _, table = fmriprep
    image = next(root.rglob(f"*{MNI}_desc-preproc_bold.nii.gz"))
    expected, expected_mask = load_confounds(
        str(image), strategy=bids.CONFOUND_STRATEGY, motion="full", wm_csf="basic"
    )
    got, mask = bids.plain_confounds(table)
    np.testing.assert_array_equal(mask, expected_mask)
    pd.testing.assert_frame_equal(
        got[sorted(got.columns)].reset_index(drop=True),
        expected[sorted(expected.columns)].reset_index(drop=True),
        check_dtype=False,
        atol=1e-10,
    )


def test_confounds_without_json_and_fallback(tmp_path):
    root, _, _ = make_fmriprep(make_raw(tmp_path / "raw"), with_json=False)
    (run,) = discover(str(root), ImportOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nilearn needs the JSON only for CompCor
        with_nilearn = run.load()
    # an uncompressed image is refused by nilearn's loader: columns are then selected directly
    image = next(root.rglob(f"*{MNI}_desc-preproc_bold.nii.gz"))
    image.with_suffix("").write_bytes(gzip.decompress(image.read_bytes()))
    image.unlink()
    (run,) = discover(str(root), ImportOptions())
    assert run.source.endswith("_bold.nii")
    pattern = (
        r"desc-confounds_timeseries.tsv: nilearn's load_confounds refused it .*selecting motion"
    )
    with pytest.warns(UserWarning, match=pattern):
        fallback = run.load()
    assert fallback.confounds.shape == (N, 29)
    np.testing.assert_array_equal(fallback.sample_mask, np.arange(2, N))
    np.testing.assert_allclose(_hat(fallback.confounds), _hat(with_nilearn.confounds), atol=1e-8)
    np.testing.assert_allclose(fallback.data, with_nilearn.data, rtol=1e-6)


def _hat(x):
    """Projection onto the span of the regressors (independent of column order)."""
    return x @ np.linalg.pinv(x)


def test_confounds_length_mismatch(tmp_path):
    root, _, _ = make_fmriprep(make_raw(tmp_path / "raw"), rows=N - 5)
    (run,) = discover(str(root), ImportOptions())
    with pytest.raises(
        FmrilmError, match=r"desc-confounds_timeseries.tsv: 35 rows but .* has 40 frames"
    ):
        run.load()


def test_fmriprep_import_end_to_end(fmriprep, tmp_path):
    root, _, table = fmriprep
    import_source(str(root), tmp_path / "c", progress=False)
    cohort = Cohort(tmp_path / "c")
    row = cohort.row("sub-01_task-nback_run-1")
    assert row["n_frames"] == N - 2  # non-steady-state frames censored
    assert row["tr"] == 1.5 and row["paradigm"] == "task" and row["age"] == 25.0
    assert row["qc_fd_mean"] == pytest.approx(np.nanmean(table["framewise_displacement"]))
    assert cohort.events("sub-01_task-nback_run-1")["onset"].tolist() == [0.0, 20.0]


def test_only_native_space_is_refused(tmp_path):
    root = tmp_path / "fmriprep"
    _json(root / "dataset_description.json", {"Name": "fMRIPrep"})
    write_painted(root / "sub-01/func/sub-01_task-rest_space-T1w_desc-preproc_bold.nii.gz", 5)
    with pytest.raises(
        FmrilmError,
        match=r"space-T1w_desc-preproc_bold.nii.gz: this run has no MNI-space image \(spaces: T1w\)",
    ):
        discover(str(root), ImportOptions())


def test_unknown_tr_cli_exit_2_and_cohort_unchanged(raw, tmp_path, capsys):
    out = tmp_path / "cohort"
    import_source(str(raw), out, progress=False)
    before = folder_digest(out)
    other = tmp_path / "other"
    _json(other / "dataset_description.json", {"Name": "no TR"})
    write_painted(other / "sub-09/func/sub-09_task-rest_bold.nii.gz", n_frames=N, tr=None)
    assert main(["data", "import", str(other), "--out", str(out), "--append"]) == 2
    (err,) = re.findall(r"fmrilm: error: [^\r\n]*", capsys.readouterr().err)
    assert "sub-09_task-rest_bold.nii.gz: unknown TR" in err and "pass --tr SECONDS" in err
    assert folder_digest(out) == before and len(Cohort(out)) == 3


# --------------------------------------------------------------------------------------------
# XCP-D: parcellated derivatives

AAL_NAMES = ["Precentral_L", "Precentral_R", "Frontal_Sup_2_L", "Insula_L"]


def make_xcpd(root, segs=("AAL3",), names=AAL_NAMES):
    _json(root / "dataset_description.json", {"Name": "XCP-D", "DatasetType": "derivative"})
    _write(root / "participants.tsv", "participant_id\tgroup\nsub-01\tpatient\nsub-02\tcontrol\n")
    rng = np.random.default_rng(0)
    data = {}
    for sub in ("01", "02"):
        func = root / f"sub-{sub}" / "func"
        x = rng.standard_normal((N, len(names)))
        x[:, 2] = np.nan  # XCP-D: parcel below the coverage threshold
        for seg in segs:
            stem = f"sub-{sub}_task-rest_{MNI}_seg-{seg}_stat-mean_timeseries"
            func.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(x, columns=names).to_csv(
                func / f"{stem}.tsv", sep="\t", index=False, na_rep="n/a"
            )
            _json(func / f"{stem}.json", {"SamplingFrequency": 0.5})
        # confounds-like files beside them are not series
        pd.DataFrame({"a": [1.0]}).to_csv(
            func / f"sub-{sub}_task-rest_desc-confounds_timeseries.tsv", sep="\t"
        )
        data[sub] = x
    return data


def test_xcpd_series_are_read_as_roi_files(tmp_path):
    data = make_xcpd(tmp_path / "xcpd")
    runs = discover(str(tmp_path / "xcpd"), ImportOptions())
    assert [r.scan_id for r in runs] == ["sub-01_task-rest", "sub-02_task-rest"]
    assert [r.tr for r in runs] == [2.0, 2.0]
    assert [r.phenotypes for r in runs] == [{"group": "patient"}, {"group": "control"}]
    loaded = runs[1].load()
    kept = [n for i, n in enumerate(AAL_NAMES) if i != 2]  # the all-n/a parcel is dropped
    assert loaded.atlas.names == kept
    np.testing.assert_allclose(loaded.data, np.delete(data["02"], 2, axis=1))
    np.testing.assert_allclose(loaded.atlas.coords, load_atlas("aal3").subset(kept).coords)


def test_xcpd_several_parcellations_need_atlas(tmp_path):
    make_xcpd(tmp_path / "xcpd", segs=("AAL3", "Gordon"))
    with pytest.raises(
        FmrilmError, match=r"several parcellations \(AAL3, Gordon\); choose one with --atlas"
    ):
        discover(str(tmp_path / "xcpd"), ImportOptions())
    runs = discover(str(tmp_path / "xcpd"), ImportOptions(atlas="AAL3"))
    assert len(runs) == 2 and "seg-AAL3" in runs[0].source


def test_xcpd_unknown_region_names_need_roi_table(tmp_path):
    make_xcpd(tmp_path / "xcpd", names=["Net1_a", "Net1_b", "Net2_a", "Net2_b"])
    with pytest.raises(
        FmrilmError, match=r"seg-AAL3_stat-mean_timeseries.tsv: .*pass a ROI table with --roi-table"
    ):
        discover(str(tmp_path / "xcpd"), ImportOptions())
    table = tmp_path / "rois.tsv"
    _write(
        table, "name\tx\ty\tz\n" + "".join(f"Net{i}_{s}\t{i}\t0\t0\n" for i in (1, 2) for s in "ab")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs = discover(str(tmp_path / "xcpd"), ImportOptions(roi_table=str(table)))
    assert runs[0].load().atlas.names == ["Net1_a", "Net1_b", "Net2_b"]


def test_empty_bids_dataset(tmp_path):
    _json(tmp_path / "dataset_description.json", {"Name": "empty"})
    with pytest.raises(FmrilmError, match=r"no fMRI runs found \(neither sub-\*/\[ses-\*/\]func"):
        discover(str(tmp_path), ImportOptions())
