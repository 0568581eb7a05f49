"""CLI smoke tests: real commands on the embedded data, exit codes and one-line errors."""

import json

import numpy as np
import pytest

from fmrilm.cli import main
from fmrilm.data.cohort import Cohort


def test_import_builtin_hcp_info_and_refusals(tmp_path, capsys):
    out = tmp_path / "hcp"
    assert main(["data", "import", "builtin:hcp", "--out", str(out)]) == 0
    c = Cohort(out)
    assert len(c) == 7 and set(c.manifest["tr"]) == {0.72}
    x = c.series(0)
    assert x.shape == (1200, 80)
    # robust scaling: per-ROI median 0, IQR 1
    q25, med, q75 = np.percentile(x, [25, 50, 75], axis=0)
    np.testing.assert_allclose(med, 0, atol=1e-4)
    np.testing.assert_allclose(q75 - q25, 1, atol=1e-4)
    assert (c.manifest["qc_tsnr"] > 20).all()  # raw HCP ROI averages have high tSNR
    assert set(c.manifest["split"]) == {"train", "val", "test"}
    capsys.readouterr()

    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["subjects"] == 7 and info["atlases"] == {"aal2-cortex80": 80}
    assert info["tr_seconds"] == [0.72]

    manifest_before = (out / "manifest.parquet").read_bytes()
    assert main(["data", "import", "builtin:hcp", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a cohort (7 scans)" in err
    assert main(["data", "import", "builtin:hcp", "--out", str(out), "--append"]) == 2
    assert "duplicate scan id sub-hcp01_task-rest" in capsys.readouterr().err
    assert main(["data", "import", "builtin:hcp", "--out", str(out), "--resume"]) == 0
    assert "imported 0 scans (7 already stored)" in capsys.readouterr().out
    assert main(["data", "import", "builtin:gw", "--out", str(out), "--append"]) == 2
    assert "TR of this dataset is not recorded; pass --tr" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "import",
                "builtin:gw",
                "--out",
                str(out),
                "--append",
                "--tr",
                "2",
                "--target-tr",
                "1",
            ]
        )
        == 2
    )
    assert "holds a different cohort" in capsys.readouterr().err
    assert (out / "manifest.parquet").read_bytes() == manifest_before


def test_simulate_then_split_and_errors(tmp_path, capsys):
    out = tmp_path / "sim"
    assert (
        main(
            [
                "data",
                "simulate",
                "--out",
                str(out),
                "--subjects",
                "10",
                "--tasks",
                "1",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    c = Cohort(out)
    assert len(c) == 20 and c.manifest["subject"].nunique() == 10
    per_subject = c.manifest.groupby("subject")["split"].nunique()
    assert (per_subject == 1).all()
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "subjects   10    scans 20" in text and "diagnosis" in text
    assert main(["data", "split", str(out), "--reassign", "--site-disjoint"]) == 0
    m = Cohort(out).manifest
    assert (m.groupby("site")["split"].nunique() == 1).all()
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "simulate", "--out", str(tmp_path / "x"), "--subjects", "0"]) == 2
    assert "--subjects must be at least 1" in capsys.readouterr().err


def test_argument_errors_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "import", "builtin:hcp", "--out", "x", "--shard", "5/2"])
    assert e.value.code == 2
    assert "--shard I/N needs 0 <= I < N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "import", "builtin:hcp", "--out", "x", "--tr", "-1"])
    assert "expected a positive number" in capsys.readouterr().err
