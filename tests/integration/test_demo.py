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
    # a few tokenizer steps without the adversarial term (no LLM to load) keep this quick
    quick = ("steps=6", "batch_size=8", "log_every=3", "warmup=2", "adversarial=false")
    # stage 2 on the tiny test backbone (no LLM to load), two steps
    quick2 = ("llm=tiny", "steps=2", "batch_size=2", "log_every=1", "warmup=1")
    quick3 = ("steps=2", "batch_size=2", "log_every=1", "warmup=1")
    results = run(
        out, subjects=24, jobs=1, tokenizer_overrides=quick, pretrain_overrides=quick2,
        instruct_overrides=quick3, eval_options={"max_rows": 3, "n_boot": 20},
    )  # fmt: skip
    tok = results.pop("tokenizer")
    stage2 = results.pop("stage2")
    stage3 = results.pop("stage3")
    assert set(stage3["metrics"]["tasks"]) == {"sex", "diagnosis", "age", "task_state"}
    assert (out / "report" / "report.html").stat().st_size > 1000
    assert len(stage2["history"]) == 2 and isinstance(stage2["generated"], str)
    _check(out, results)
    text = capsys.readouterr().out
    assert "== 4/9 FC + linear model vs oracle" in text and "demo finished" in text
    assert "real HCP scan sub-hcp01_task-rest:" in text
    assert "simulated task scan sub-sim" in text and "connectivity" in text.split("5/9")[1]
    assert "step 6/6" in text and "fMRI->text R@1" in text
    assert "== 7/9 stage 2" in text and "generated:" in text
    assert "== 9/9 evaluation" in text and "report: " in text and "FC+LR" in text
    assert -1 < tok["test_r2"] < 1 and tok["test_retrieval"]["candidates"] >= 2
    for name in ("training_curves.png", "reconstruction.png", "code_usage.png"):
        assert (out / "tokenizer" / "figures" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_full_demo(tmp_path):
    out = tmp_path / "demo"
    results = run(out)
    tok = results.pop("tokenizer")
    results.pop("stage2")
    results.pop("stage3")
    _check(out, results)
    # the demo preset must learn something: beyond the per-ROI mean and above chance retrieval
    assert tok["test_r2"] > 0.2
    assert tok["test_retrieval"]["R@5"] > tok["test_retrieval"]["chance_R@5"]
    # with 200 subjects the oracle is clearly informative
    assert results["sex"]["oracle"][0] > 0.75 and results["diagnosis"]["oracle"][0] > 0.6
