"""The demo end to end: a quick version in the default run, the full one marked slow."""

import pytest

from fmrilm.recipes.demo import run


def _check(out, results):
    for name in ("hcp_scan.png", "sim_scan.png"):
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert set(results) == {"sex", "diagnosis", "age", "fluid_intelligence"}
    for label, r in results.items():
        lo_fc, hi_orc = r["fc_linear"], r["oracle"]
        assert len(lo_fc) == 3 and lo_fc[1] <= lo_fc[0] <= lo_fc[2], label
        assert len(hi_orc) == 3 and hi_orc[1] <= hi_orc[0] <= hi_orc[2], label


def test_quick_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    results = run(out, subjects=24, jobs=1)
    _check(out, results)
    text = capsys.readouterr().out
    assert "== 4/5 FC + linear model vs oracle" in text and "demo finished" in text
    assert "real HCP scan sub-hcp01_task-rest:" in text
    assert "simulated task scan sub-sim" in text and "connectivity" in text.split("5/5")[1]


@pytest.mark.slow
def test_full_demo(tmp_path):
    out = tmp_path / "demo"
    results = run(out)
    _check(out, results)
    # with 200 subjects the oracle is clearly informative
    assert results["sex"]["oracle"][0] > 0.75 and results["diagnosis"]["oracle"][0] > 0.6
