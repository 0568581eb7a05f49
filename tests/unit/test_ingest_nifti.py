"""Single 4-D NIfTI: parcellation with AAL3 or a custom label image, TR, and bad images."""

from __future__ import annotations

import gzip
import re

import nibabel as nib
import numpy as np
import pytest
from _ingest_data import GRID_SHAPE, coarse_labels, folder_digest, grid_affine, write_painted

from fmrilm.cli import main
from fmrilm.data.atlas import load_atlas
from fmrilm.data.cohort import Cohort
from fmrilm.data.ingest import ImportOptions, import_source, nifti
from fmrilm.data.preprocess import PreprocessConfig
from fmrilm.errors import FmrilmError

RAW = PreprocessConfig(detrend=False, high_pass=None, scaling="none")


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    path = tmp_path_factory.mktemp("nifti") / "sub-07_ses-2_task-rest_run-1_bold.nii.gz"
    series = write_painted(path, n_frames=40, tr=2.0)
    return path, series


def test_parcellation_recovers_painted_series(painted):
    path, series = painted
    (run,) = nifti.discover(path, ImportOptions())
    assert (run.subject, run.session, run.task, run.run, run.tr) == ("07", "2", "rest", "1", 2.0)
    loaded = run.load()
    aal3 = load_atlas("aal3")
    by_label = dict(zip(aal3.rois["label"], aal3.names, strict=True))
    expected = [by_label[v] for v in series if v in by_label]
    # every label that survived the 6 mm grid, in AAL3 order; the rest are dropped
    assert loaded.atlas.names == [n for n in aal3.names if n in set(expected)]
    assert 100 < len(loaded.atlas) < len(aal3)
    assert loaded.atlas.name.startswith(f"aal3-{len(loaded.atlas)}-")
    assert loaded.data.shape == (40, len(loaded.atlas))
    for column, row in enumerate(loaded.atlas.rois.itertuples()):
        r = np.corrcoef(loaded.data[:, column], series[int(row.label)])[0, 1]
        assert r > 0.95, (row.name, r)
    np.testing.assert_allclose(
        loaded.atlas.coords, aal3.subset(loaded.atlas.names).coords, atol=1e-9
    )


def test_import_end_to_end_writes_cohort(painted, tmp_path):
    path, series = painted
    report = import_source(str(path), tmp_path / "c", config=RAW, progress=False)
    assert report["added"] == 1
    cohort = Cohort(tmp_path / "c")
    row = cohort.row("sub-07_ses-2_task-rest_run-1")
    assert row["tr"] == 2.0 and row["n_frames"] == 40
    atlas = cohort.atlas(row["atlas"])
    x = cohort.series("sub-07_ses-2_task-rest_run-1")
    precentral = atlas.names.index("Precentral_L")
    assert np.corrcoef(x[:, precentral], series[1])[0, 1] > 0.99  # AAL3 label 1


def test_custom_label_image_and_table(tmp_path):
    labels = np.zeros(GRID_SHAPE, dtype=np.int16)
    labels[5:10, 5:10, 5:10] = 3
    labels[20:25, 20:25, 10:15] = 7
    atlas_path = tmp_path / "cubes.nii.gz"
    nib.save(nib.Nifti1Image(labels, grid_affine()), atlas_path)
    (tmp_path / "cubes.txt").write_text("3 CubeA\n7 CubeB\n9 Absent\n")
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 30))
    data = np.zeros((*GRID_SHAPE, 30), dtype=np.float32)
    data[labels == 3] = 50 + a
    data[labels == 7] = 50 + b
    nib.save(nib.Nifti1Image(data, grid_affine()), tmp_path / "scan.nii")
    options = ImportOptions(atlas=str(atlas_path), atlas_labels=str(tmp_path / "cubes.txt"), tr=1.5)
    (run,) = nifti.discover(tmp_path / "scan.nii", options)
    assert run.subject == "scan" and run.tr == 1.5
    loaded = run.load()
    assert loaded.atlas.names == ["CubeA", "CubeB"] and loaded.atlas.name == "cubes"
    np.testing.assert_allclose(loaded.data, np.stack([50 + a, 50 + b], axis=1), atol=1e-5)
    # centroid of voxels 5..9 on a 6 mm grid starting at the MNI origin
    np.testing.assert_allclose(loaded.atlas.coords[0], np.add((-90, -126, -72), 7 * 6.0))


def test_tr_from_header_units_and_missing(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 2500
    assert nifti.header_tr(img) == 2.5
    img.header.set_xyzt_units("mm", "unknown")
    img.header["pixdim"][4] = 1.0
    assert nifti.header_tr(img) is None
    path = tmp_path / "sub-01_bold.nii.gz"
    write_painted(path, n_frames=5, tr=None)
    with pytest.raises(FmrilmError, match=r"sub-01_bold.nii.gz: unknown TR.*pass --tr SECONDS"):
        nifti.discover(path, ImportOptions())
    assert nifti.discover(path, ImportOptions(tr=0.8))[0].tr == 0.8
    # a same-name sidecar and a participants.tsv beside the file are read too
    (tmp_path / "sub-01_bold.json").write_text('{"RepetitionTime": 3.0}')
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t41\n")
    (run,) = nifti.discover(path, ImportOptions())
    assert run.tr == 3.0 and run.phenotypes == {"age": 41.0}


def test_3d_image_is_refused(tmp_path):
    path = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(GRID_SHAPE, np.float32), grid_affine()), path)
    with pytest.raises(
        FmrilmError, match=r"anat.nii.gz: expected a 4-D fMRI image .*got shape \(31, 37, 31\)"
    ):
        nifti.discover(path, ImportOptions())


def test_image_outside_atlas_is_refused(tmp_path):
    far = tmp_path / "far.nii.gz"
    write_painted(far, n_frames=5, shift_mm=(2000.0, 0.0, 0.0))
    with pytest.raises(
        FmrilmError, match=r"far.nii.gz: .*does not overlap the atlas at all.*not in MNI space"
    ):
        nifti.discover(far, ImportOptions())
    partial = tmp_path / "partial.nii.gz"
    write_painted(partial, n_frames=5, shift_mm=(130.0, 0.0, 0.0))
    with pytest.raises(FmrilmError, match=r"partial.nii.gz: .*covers only \d+% of the atlas"):
        nifti.discover(partial, ImportOptions())


def test_nan_voxels(tmp_path):
    def nan_in_one_frame(labels, data, series):
        data[labels == 1, 3] = np.nan

    def nan_everywhere_in_precentral(labels, data, series):
        data[labels == 1] = np.nan  # SPM-style: no data there at all

    path = tmp_path / "nan.nii.gz"
    write_painted(path, n_frames=10, edit=nan_in_one_frame)
    (run,) = nifti.discover(path, ImportOptions())
    with pytest.raises(
        FmrilmError, match=r"nan.nii.gz: \d+ voxels are NaN/Inf in some frames .*frame 3"
    ):
        run.load()
    path = tmp_path / "masked.nii.gz"
    series = write_painted(path, n_frames=10, edit=nan_everywhere_in_precentral)
    loaded = nifti.discover(path, ImportOptions())[0].load()
    assert "Precentral_L" not in loaded.atlas.names and "Precentral_R" in loaded.atlas.names
    column = loaded.atlas.names.index("Precentral_R")
    assert np.corrcoef(loaded.data[:, column], series[2])[0, 1] > 0.95
    assert np.isfinite(loaded.data).all()


def test_constant_region_is_named(tmp_path):
    def constant_precentral(labels, data, series):
        data[labels == 1] = 100.0

    path = tmp_path / "flat.nii.gz"
    write_painted(path, n_frames=30, edit=constant_precentral)
    pattern = r"flat.nii.gz .*1 constant \(zero-variance\) ROIs: 0 \(Precentral_L\)"
    with pytest.raises(FmrilmError, match=pattern):
        import_source(str(path), tmp_path / "out", progress=False)


def test_too_short_series(tmp_path):
    path = tmp_path / "short.nii.gz"
    write_painted(path, n_frames=8)
    with pytest.raises(FmrilmError, match=r"short.nii.gz .*only 8 frames .*minimum of 20"):
        import_source(str(path), tmp_path / "out", progress=False)


def _truncate(path, keep=0.5):
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


def test_truncated_gzip_named_and_cohort_unchanged(painted, tmp_path, capsys):
    path, _ = painted
    out = tmp_path / "cohort"
    import_source(str(path), out, config=RAW, progress=False)
    before = folder_digest(out)
    broken = tmp_path / "sub-08_task-rest_bold.nii.gz"
    broken.write_bytes(path.read_bytes())
    _truncate(broken)
    with gzip.open(broken) as fh:  # the header is intact: discovery alone cannot tell
        assert len(fh.read(348)) == 348
    (run,) = nifti.discover(broken, ImportOptions())
    with pytest.raises(FmrilmError, match=r"sub-08_task-rest_bold.nii.gz: .*corrupt or truncated"):
        run.load()
    raw_flags = ["--no-detrend", "--high-pass", "0", "--scaling", "none"]
    code = main(["data", "import", str(broken), "--out", str(out), "--append", *raw_flags])
    assert code == 2
    (err,) = re.findall(r"fmrilm: error: [^\r\n]*", capsys.readouterr().err)  # one line
    assert "sub-08_task-rest_bold.nii.gz: cannot read the image data" in err
    assert "corrupt or truncated" in err
    assert folder_digest(out) == before
    assert len(Cohort(out)) == 1


def test_not_a_nifti(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"not an image" * 10)
    with pytest.raises(FmrilmError, match=r"junk.nii: cannot read as NIfTI"):
        nifti.discover(path, ImportOptions())


def test_coordinate_atlas_cannot_parcellate_voxels(painted):
    path, _ = painted
    table = path.parent / "coords.tsv"
    table.write_text("name\tx\ty\tz\nA\t0\t0\t0\n")
    with pytest.raises(
        FmrilmError, match=r"--atlas .*coords.tsv: a volume image needs a label-image atlas"
    ):
        nifti.discover(path, ImportOptions(atlas=str(table)))


def test_coarse_grid_drops_vanished_labels():
    present = set(np.unique(coarse_labels())) - {0}
    aal3 = load_atlas("aal3")
    assert len(present) < len(aal3)  # the premise of the subset naming above
