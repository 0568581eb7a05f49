"""CIFTI-2 dense time series parcellated with a dlabel file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes as ax

from fmrilm.data.atlas import load_atlas
from fmrilm.data.cohort import Cohort
from fmrilm.data.ingest import ImportOptions, cifti, discover, import_source
from fmrilm.errors import FmrilmError

T = 50
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
LABELS = {1: "Precentral_L", 2: "Precentral_R", 3: "Thalamus_R", 4: "Insula_L"}  # 4 is unused


def brain_models(n_vertices=40, mesh=80):
    cortex = ax.BrainModelAxis.from_surface(np.arange(n_vertices), mesh, name="CortexLeft")
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    return cortex + ax.BrainModelAxis.from_mask(mask, affine=AFFINE, name="ThalamusRight")


def key_per_grayordinate(models):
    """Vertices 0-19 -> 1, 20-39 -> 2 (others unlabelled), voxels -> 3."""
    vertex = np.asarray(models.vertex)
    keys = np.where(vertex < 20, 1, np.where(vertex < 40, 2, 0))
    return np.where(vertex < 0, 3, keys)


def write_dlabel(path, models, names=LABELS):
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    table.update({k: (v, (1.0, 0.0, 0.0, 1.0)) for k, v in names.items()})
    img = nib.Cifti2Image(
        key_per_grayordinate(models)[None].astype(np.float32),
        header=(ax.LabelAxis(["parcels"], [table]), models),
    )
    img.nifti_header.set_intent("ConnDenseLabel")
    nib.save(img, path)
    return path


def write_dtseries(path, step=0.8, unit="SECOND", seed=0):
    """Grayordinates carry their label's time course plus noise; returns courses by key."""
    models = brain_models()
    rng = np.random.default_rng(seed)
    courses = {k: 100 + rng.standard_normal(T) for k in (1, 2, 3)}
    keys = key_per_grayordinate(models)
    data = np.stack([courses[k] for k in keys], axis=1) + 0.1 * rng.standard_normal((T, keys.size))
    img = nib.Cifti2Image(data.astype(np.float32), header=(ax.SeriesAxis(0, step, T, unit), models))
    img.nifti_header.set_intent("ConnDenseSeries")
    nib.save(img, path)
    return courses


@pytest.fixture
def dtseries(tmp_path):
    path = tmp_path / "sub-05_task-rest_bold.dtseries.nii"
    return path, write_dtseries(path)


def test_dlabel_parcellation_with_aal_names(dtseries, tmp_path):
    path, courses = dtseries
    dlabel = write_dlabel(tmp_path / "toy.dlabel.nii", brain_models())
    (run,) = discover(str(path), ImportOptions(atlas=str(dlabel)))
    assert (run.subject, run.task) == ("05", "rest") and run.tr == pytest.approx(0.8)
    loaded = run.load()
    assert loaded.atlas.names == ["Precentral_L", "Precentral_R", "Thalamus_R"]
    for column, key in enumerate((1, 2, 3)):
        # mean over 20 vertices / 8 voxels of course + noise(0.1)
        np.testing.assert_allclose(loaded.data[:, column], courses[key], atol=0.1)
    aal3 = load_atlas("aal3")
    np.testing.assert_allclose(
        loaded.atlas.coords[:2], aal3.subset(["Precentral_L", "Precentral_R"]).coords
    )
    assert loaded.atlas.name.startswith("toy")


def test_cortex_only_dlabel_matches_by_vertex(dtseries, tmp_path):
    path, courses = dtseries
    cortex = ax.BrainModelAxis.from_surface(np.arange(80), 80, name="CortexLeft")  # whole mesh
    dlabel = write_dlabel(tmp_path / "cortex.dlabel.nii", cortex)
    loaded = discover(str(path), ImportOptions(atlas=str(dlabel)))[0].load()
    assert loaded.atlas.names == ["Precentral_L", "Precentral_R"]
    np.testing.assert_allclose(loaded.data, np.stack([courses[1], courses[2]], axis=1), atol=0.1)


def test_roi_table_for_unknown_label_names(dtseries, tmp_path):
    path, _ = dtseries
    names = {1: "L_V1_ROI", 2: "R_V1_ROI", 3: "Thal"}
    dlabel = write_dlabel(tmp_path / "glasserish.dlabel.nii", brain_models(), names=names)
    with pytest.raises(
        FmrilmError,
        match=r"glasserish.dlabel.nii: ROI names such as .*pass a ROI table with --roi-table",
    ):
        discover(str(path), ImportOptions(atlas=str(dlabel)))
    table = tmp_path / "coords.tsv"
    table.write_text(
        "name\tx\ty\tz\nThal\t10\t-18\t8\nR_V1_ROI\t12\t-90\t2\nL_V1_ROI\t-12\t-90\t2\n"
    )
    loaded = discover(str(path), ImportOptions(atlas=str(dlabel), roi_table=str(table)))[0].load()
    assert loaded.atlas.names == ["L_V1_ROI", "R_V1_ROI", "Thal"]
    np.testing.assert_array_equal(loaded.atlas.coords[2], [10, -18, 8])
    short = tmp_path / "short.tsv"
    short.write_text("name\tx\ty\tz\nThal\t10\t-18\t8\n")
    with pytest.raises(
        FmrilmError, match=r"--roi-table .*short.tsv: no rows for labels \['L_V1_ROI', 'R_V1_ROI'\]"
    ):
        discover(str(path), ImportOptions(atlas=str(dlabel), roi_table=str(short)))


def test_import_end_to_end(dtseries, tmp_path):
    path, courses = dtseries
    dlabel = write_dlabel(tmp_path / "toy.dlabel.nii", brain_models())
    import_source(
        str(path), tmp_path / "c", options=ImportOptions(atlas=str(dlabel)), progress=False
    )
    row = Cohort(tmp_path / "c").row("sub-05_task-rest")
    assert row["n_rois"] == 3 and row["n_frames"] == T and row["tr"] == pytest.approx(0.8)


def test_errors(dtseries, tmp_path):
    path, _ = dtseries
    with pytest.raises(
        FmrilmError, match=r"CIFTI input needs a parcellation: pass --atlas FILE.dlabel.nii"
    ):
        cifti.discover(path, ImportOptions())
    with pytest.raises(FmrilmError, match=r"--atlas aal3: CIFTI input needs a CIFTI label file"):
        cifti.discover(path, ImportOptions(atlas="aal3"))
    hertz = tmp_path / "hz.dtseries.nii"
    write_dtseries(hertz, step=1.0, unit="HERTZ")
    dlabel = write_dlabel(tmp_path / "toy.dlabel.nii", brain_models())
    with pytest.raises(FmrilmError, match=r"hz.dtseries.nii: unknown TR .*pass --tr SECONDS"):
        cifti.discover(hertz, ImportOptions(atlas=str(dlabel)))
    assert cifti.discover(hertz, ImportOptions(atlas=str(dlabel), tr=1.2))[0].tr == 1.2
    other = ax.BrainModelAxis.from_surface(np.arange(10), 10, name="CortexRight")
    wrong = write_dlabel(tmp_path / "right.dlabel.nii", other)
    (run,) = cifti.discover(path, ImportOptions(atlas=str(wrong)))
    with pytest.raises(
        FmrilmError, match=r"bold.dtseries.nii: shares no grayordinate with atlas right.dlabel.nii"
    ):
        run.load()
    junk = tmp_path / "junk.dtseries.nii"
    junk.write_bytes(b"\0" * 400)
    with pytest.raises(FmrilmError, match=r"CIFTI time series .*junk.dtseries.nii: "):
        cifti.discover(junk, ImportOptions(atlas=str(dlabel)))
