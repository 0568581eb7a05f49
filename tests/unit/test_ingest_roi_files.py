"""ROI time-series files: every format, names and coordinates, phenotypes, TR and bad inputs."""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
from _ingest_data import folder_digest

from fmrilm.cli import main
from fmrilm.data.atlas import load_atlas
from fmrilm.data.cohort import Cohort
from fmrilm.data.ingest import ImportOptions, discover, import_source, roi_files
from fmrilm.data.preprocess import PreprocessConfig
from fmrilm.errors import FmrilmError

T, R = 60, 5
NAMES = ["Precentral_L", "Precentral_R", "Frontal_Sup_2_L", "Insula_L", "Thalamus_L"]
RAW = PreprocessConfig(detrend=False, high_pass=None, scaling="none")


def series(seed=0, t=T, r=R):
    return 10 + np.random.default_rng(seed).standard_normal((t, r))


@pytest.fixture
def roi_table(tmp_path):
    path = tmp_path / "my_rois.tsv"
    rows = "".join(f"R{i}\t{i}\t{-i}\t{2 * i}\tNet{i % 2}\n" for i in range(R))
    path.write_text("name\tx\ty\tz\tnetwork\n" + rows)
    return path


def _one(path, **options):
    (run,) = discover(str(path), ImportOptions(**options))
    return run, run.load()


# --------------------------------------------------------------------------------------------
# formats


def test_npy_with_roi_table(tmp_path, roi_table):
    x = series()
    np.save(tmp_path / "sub-03_task-rest.npy", x)
    run, loaded = _one(tmp_path / "sub-03_task-rest.npy", roi_table=str(roi_table), tr=0.8)
    assert (run.subject, run.task, run.tr) == ("03", "rest", 0.8)
    np.testing.assert_array_equal(loaded.data, x)
    assert loaded.atlas.name == "my_rois" and loaded.atlas.names == [f"R{i}" for i in range(R)]
    np.testing.assert_array_equal(loaded.atlas.coords[3], [3, -3, 6])
    assert loaded.atlas.networks[:2] == ["Net0", "Net1"]


def test_csv_header_names_resolve_to_aal3(tmp_path):
    x = series(1)
    # pandas' default index column is dropped; names resolve to AAL3 centroids
    pd.DataFrame(x, columns=NAMES).to_csv(tmp_path / "subj_A-1.csv")
    run, loaded = _one(tmp_path / "subj_A-1.csv", tr=2)
    assert run.subject == "subjA1"  # stem reduced to letters and digits
    np.testing.assert_allclose(loaded.data, x)
    assert loaded.atlas.names == NAMES
    aal3 = load_atlas("aal3")
    np.testing.assert_allclose(loaded.atlas.coords[:4], aal3.subset(NAMES[:4]).coords)
    # Thalamus_L is empty in AAL3's image: its centroid comes from AAL (v1)
    np.testing.assert_allclose(
        loaded.atlas.coords[4], load_atlas("aal").subset(["Thalamus_L"]).coords[0]
    )


def test_tsv_txt_and_headerless_text(tmp_path, roi_table):
    x = series(2)
    pd.DataFrame(x, columns=NAMES).to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    np.savetxt(tmp_path / "b.txt", x, fmt="%.6f")  # whitespace, no header
    np.savetxt(tmp_path / "c.csv", x, fmt="%.6f", delimiter=",")
    _, tsv = _one(tmp_path / "a.tsv", tr=2)
    _, txt = _one(tmp_path / "b.txt", tr=2, roi_table=str(roi_table))
    _, csv = _one(tmp_path / "c.csv", tr=2, roi_table=str(roi_table))
    np.testing.assert_allclose(tsv.data, x)
    np.testing.assert_allclose(txt.data, x, atol=1e-6)
    np.testing.assert_allclose(csv.data, x, atol=1e-6)
    assert tsv.atlas.names == NAMES and txt.atlas.names == csv.atlas.names == roi_table_names()


def roi_table_names():
    return [f"R{i}" for i in range(R)]


def test_h5_only_matrix_or_key(tmp_path, roi_table):
    x = series(3)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["group/bold"] = x
        f["tr"] = 2.0
        f["names"] = np.arange(R)
    _, loaded = _one(tmp_path / "one.h5", tr=2, roi_table=str(roi_table))
    np.testing.assert_array_equal(loaded.data, x)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = x, 2 * x
    with pytest.raises(
        FmrilmError,
        match=r"two.h5: 2 2-D arrays \(a \(60, 5\), b \(60, 5\)\); choose one with --key NAME",
    ):
        discover(str(tmp_path / "two.h5"), ImportOptions(tr=2, roi_table=str(roi_table)))
    _, loaded = _one(tmp_path / "two.h5", tr=2, roi_table=str(roi_table), array_key="b")
    np.testing.assert_array_equal(loaded.data, 2 * x)
    with pytest.raises(
        FmrilmError,
        match=r"--key nope: no such array in .*two.h5; it holds: a \(60, 5\), b \(60, 5\)",
    ):
        discover(
            str(tmp_path / "two.h5"),
            ImportOptions(tr=2, roi_table=str(roi_table), array_key="nope"),
        )


def test_mat_v5_and_v73(tmp_path, roi_table):
    x = series(4)
    scipy.io.savemat(tmp_path / "v5.mat", {"ts": x, "tr": 2.0, "label": "rest"})
    _, loaded = _one(tmp_path / "v5.mat", tr=2, roi_table=str(roi_table))
    np.testing.assert_array_equal(loaded.data, x)
    # MATLAB v7.3 is HDF5 holding the column-major transpose of the MATLAB array
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as f:
        f["ts"] = x.T
    _, loaded = _one(tmp_path / "v73.mat", tr=2, roi_table=str(roi_table))
    np.testing.assert_array_equal(loaded.data, x)
    (tmp_path / "junk.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(FmrilmError, match=r"junk.mat: cannot read as a MATLAB file"):
        discover(str(tmp_path / "junk.mat"), ImportOptions(tr=2, roi_table=str(roi_table)))


def test_npy_never_unpickles(tmp_path, roi_table):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    run = discover(str(tmp_path / "obj.npy"), ImportOptions(tr=2, roi_table=str(roi_table)))[0]
    with pytest.raises(
        FmrilmError, match=r"obj.npy: cannot read \(ValueError: Object arrays cannot be loaded"
    ):
        run.load()


# --------------------------------------------------------------------------------------------
# folders, phenotypes, TR


def test_folder_with_participants_sidecar_and_events(tmp_path):
    for sub in ("01", "02"):
        pd.DataFrame(series(int(sub)), columns=NAMES).to_csv(
            tmp_path / f"sub-{sub}_task-motor_timeseries.tsv", sep="\t", index=False
        )
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tage\tdx\nsub-01\t30\tASD\nsub-02\tn/a\tTD\n"
    )
    (tmp_path / "sub-01_task-motor_timeseries.json").write_text(
        json.dumps({"RepetitionTime": 0.72})
    )
    (tmp_path / "task-motor_timeseries.json").write_text(json.dumps({"RepetitionTime": 1.0}))
    (tmp_path / "sub-01_task-motor_events.tsv").write_text(
        "onset\tduration\ttrial_type\n5\t12\tleft\n"
    )
    runs = discover(str(tmp_path), ImportOptions())
    assert [r.scan_id for r in runs] == ["sub-01_task-motor", "sub-02_task-motor"]
    assert [r.tr for r in runs] == [0.72, 1.0]  # same-stem sidecar, then the folder-level one
    assert runs[0].phenotypes == {"age": 30.0, "dx": "ASD"} and runs[1].phenotypes == {"dx": "TD"}
    assert runs[0].events.to_dict("list") == {
        "onset": [5.0],
        "duration": [12.0],
        "trial_type": ["left"],
    }
    assert runs[1].events is None and runs[0].paradigm == "task"
    # end to end: both runs land in the cohort with phenotypes
    import_source(str(tmp_path), tmp_path / "cohort", config=RAW, progress=False)
    cohort = Cohort(tmp_path / "cohort")
    assert cohort.manifest.set_index("subject")["dx"].to_dict() == {"01": "ASD", "02": "TD"}
    np.testing.assert_allclose(cohort.series("sub-02_task-motor"), series(2), rtol=1e-6)


def test_phenotypes_option_overrides_and_must_match(tmp_path, roi_table):
    np.save(tmp_path / "sub-07.npy", series())
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("subject,score,sex\n07,1.5,F\n08,2.5,M\n")
    run, _ = _one(tmp_path, tr=2, roi_table=str(roi_table), phenotypes=str(pheno))
    assert run.phenotypes == {"score": 1.5, "sex": "F"}
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("participant_id\tscore\nsub-99\t1\n")
    with pytest.raises(
        FmrilmError, match=r"phenotype table .*wrong.tsv: none of the 1 imported subjects"
    ):
        discover(
            str(tmp_path), ImportOptions(tr=2, roi_table=str(roi_table), phenotypes=str(wrong))
        )
    noid = tmp_path / "noid.tsv"
    noid.write_text("name\tscore\nx\t1\n")
    with pytest.raises(
        FmrilmError, match=r"noid.tsv: needs a participant_id \(or subject\) column"
    ):
        discover(str(tmp_path), ImportOptions(tr=2, roi_table=str(roi_table), phenotypes=str(noid)))


def test_unknown_tr(tmp_path, roi_table):
    np.save(tmp_path / "sub-01.npy", series())
    with pytest.raises(FmrilmError, match=r"sub-01.npy: unknown TR .*pass --tr SECONDS"):
        discover(str(tmp_path / "sub-01.npy"), ImportOptions(roi_table=str(roi_table)))


# --------------------------------------------------------------------------------------------
# bad inputs


def test_names_and_tables_required(tmp_path, roi_table):
    np.save(tmp_path / "x.npy", series())
    with pytest.raises(
        FmrilmError, match=r"x.npy: the file has no ROI names .*pass --roi-table FILE"
    ):
        discover(str(tmp_path / "x.npy"), ImportOptions(tr=2))
    pd.DataFrame(series(), columns=[f"parcel{i}" for i in range(R)]).to_csv(
        tmp_path / "y.csv", index=False
    )
    with pytest.raises(
        FmrilmError, match=r"y.csv: ROI names such as .*parcel0.* pass a ROI table with --roi-table"
    ):
        discover(str(tmp_path / "y.csv"), ImportOptions(tr=2))
    # header names that are not in the table, while some are: refused by name
    pd.DataFrame(series(), columns=["R0", "R1", "R2", "R3", "Other"]).to_csv(
        tmp_path / "z.csv", index=False
    )
    with pytest.raises(
        FmrilmError, match=r"z.csv: header names \['Other'\] are not in the ROI table"
    ):
        discover(str(tmp_path / "z.csv"), ImportOptions(tr=2, roi_table=str(roi_table)))


def test_roi_count_mismatch(tmp_path, roi_table):
    np.save(tmp_path / "seven.npy", series(r=7))
    run = discover(str(tmp_path / "seven.npy"), ImportOptions(tr=2, roi_table=str(roi_table)))[0]
    with pytest.raises(
        FmrilmError,
        match=r"seven.npy: has 7 ROI columns but the ROI table \(my_rois\) lists 5 ROIs",
    ):
        run.load()


@pytest.mark.parametrize(
    ("name", "make", "pattern"),
    [
        (
            "transposed",
            lambda: series().T,
            r"shape \(5, 60\) looks transposed: expected \(time, 5 ROIs\)",
        ),
        (
            "nan",
            lambda: _with(series(), (7, 2), np.nan),
            r"1 NaN/Inf values \(first at frame 7, ROI 2 \(R2\)\)",
        ),
        (
            "inf",
            lambda: _with(series(), (9, 4), np.inf),
            r"1 NaN/Inf values \(first at frame 9, ROI 4 \(R4\)\)",
        ),
        (
            "constant",
            lambda: _with(series(), (slice(None), 1), 3.0),
            r"1 constant \(zero-variance\) ROIs: 1 \(R1\)",
        ),
        ("short", lambda: series(t=8), r"only 8 frames at TR 2 s, fewer than the minimum of 20"),
    ],
)
def test_bad_arrays_are_named(tmp_path, roi_table, name, make, pattern):
    np.save(tmp_path / f"{name}.npy", make())
    with pytest.raises(FmrilmError, match=rf"{name}.npy \(sub-{name}_task-rest\): {pattern}"):
        import_source(
            str(tmp_path / f"{name}.npy"),
            tmp_path / "out",
            options=ImportOptions(tr=2, roi_table=str(roi_table)),
            progress=False,
        )


def _with(x, index, value):
    x[index] = value
    return x


def test_all_missing_column_is_dropped_partial_is_refused(tmp_path):
    x = series()
    x[:, 1] = np.nan
    pd.DataFrame(x, columns=NAMES).to_csv(tmp_path / "gap.tsv", sep="\t", index=False, na_rep="n/a")
    _, loaded = _one(tmp_path / "gap.tsv", tr=2)
    assert loaded.atlas.names == [n for n in NAMES if n != "Precentral_R"]
    assert re.fullmatch(r"rois-4-[0-9a-f]{6}", loaded.atlas.name)
    np.testing.assert_allclose(loaded.data, np.delete(x, 1, axis=1))


def test_bad_key_cli_exit_2_and_cohort_unchanged(tmp_path, roi_table, capsys):
    np.save(tmp_path / "sub-01.npy", series())
    out = tmp_path / "cohort"
    common = ["--out", str(out), "--tr", "2", "--roi-table", str(roi_table)]
    assert main(["data", "import", str(tmp_path / "sub-01.npy"), *common]) == 0
    before = folder_digest(out)
    with h5py.File(tmp_path / "sub-02.h5", "w") as f:
        f["bold"] = series()
    assert (
        main(["data", "import", str(tmp_path / "sub-02.h5"), *common, "--append", "--key", "BOLD"])
        == 2
    )
    (err,) = re.findall(r"fmrilm: error: [^\r\n]*", capsys.readouterr().err)
    assert "--key BOLD: no such array in" in err and "sub-02.h5; it holds: bold (60, 5)" in err
    assert folder_digest(out) == before and Cohort(out).scan_ids == ["sub-01_task-rest"]


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.xlsx").write_bytes(b"x")
    with pytest.raises(FmrilmError, match=r"notes.xlsx: unsupported file type"):
        roi_files.discover(tmp_path / "notes.xlsx", ImportOptions())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FmrilmError, match=r"empty: no ROI time-series files"):
        discover(str(empty), ImportOptions())
