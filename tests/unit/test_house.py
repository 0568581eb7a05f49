"""The package's face and shared helpers: public API, one LR schedule, one resume guard,
one format/version guard, one "complete time steps" helper."""

import json
import subprocess
import sys

import numpy as np
import pytest

import fmrilm
from fmrilm.errors import FmrilmError
from fmrilm.io import read_meta
from fmrilm.tokenizer.codes import complete_steps, scan_span, scan_steps, window_span
from fmrilm.training.common import check_resume, lr_factor


def test_public_api_resolves_to_the_library_classes():
    from fmrilm import FMRILM, Cohort, Corpus, FMRITokenizer
    from fmrilm.corpus.build import Corpus as C2
    from fmrilm.data.cohort import Cohort as C1
    from fmrilm.model.fusion import FMRILM as M
    from fmrilm.tokenizer.neural_tokenizer import FMRITokenizer as T

    assert (Cohort, Corpus, FMRITokenizer, FMRILM) == (C1, C2, T, M)
    assert {"Cohort", "Corpus", "FMRITokenizer", "FMRILM"} <= set(fmrilm.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fmrilm.Nope  # noqa: B018


def test_import_fmrilm_and_the_data_layer_do_not_import_torch():
    code = (
        "import sys, fmrilm, fmrilm.cli; from fmrilm import Cohort, Corpus; "
        "import fmrilm.data.ingest, fmrilm.data.simulate, fmrilm.corpus.build; "
        "print(json.dumps(['torch' in sys.modules, 'transformers' in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [False, False]


def test_lr_factor_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_factor(100, 100, 10) == pytest.approx(0.1)
    assert lr_factor(500, 100, 10) == pytest.approx(0.1)  # past the end: stays at the floor


def test_check_resume_names_what_differs():
    from fmrilm.config import PretrainConfig, to_dict

    cfg = PretrainConfig(llm="tiny")
    meta = {"config": to_dict(cfg), "inputs": {"cohort_id": "a"}}
    check_resume("out", meta, PretrainConfig(llm="tiny", steps=9999), {"cohort_id": "a"})
    with pytest.raises(
        FmrilmError, match=r"out: its checkpoint was trained on other inputs \(cohort_id\)"
    ):
        check_resume("out", meta, cfg, {"cohort_id": "b"})
    with pytest.raises(FmrilmError, match=r"trained with other settings \(lr, seed\)"):
        check_resume("out", meta, PretrainConfig(llm="tiny", lr=0.5, seed=3), {"cohort_id": "a"})


def test_read_meta_checks_format_and_version(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "fmrilm-x", "format_version": 2}))
    assert read_meta(path, "fmrilm-x", 2)["format_version"] == 2
    with pytest.raises(
        FmrilmError, match=r"x.json: not an fmrilm fmrilm-y file \(format='fmrilm-x'\)"
    ):
        read_meta(path, "fmrilm-y", 2)
    with pytest.raises(FmrilmError, match="format version 2 differs from this fmrilm's 3"):
        read_meta(path, "fmrilm-x", 3)
    with pytest.raises(FmrilmError, match="no such thing"):
        read_meta(tmp_path / "missing.json", "fmrilm-x", missing="no such thing")


def test_complete_steps_and_the_spans_built_on_it():
    w = np.arange(12).reshape(3, 4)
    assert complete_steps(w) == 4
    short = w.copy()
    short[:, 2:] = -1
    assert complete_steps(short) == 2
    codes = np.stack([w, short])  # (windows, ROIs, patches): a short last window
    np.testing.assert_array_equal(scan_steps(codes), np.concatenate([w, short[:, :2]], axis=1))
    np.testing.assert_array_equal(scan_span(codes, 3), w[:, :3])  # first window, first steps
    rng = np.random.default_rng(0)
    for _ in range(20):
        k, start, n = window_span(codes, 3, rng)
        assert n == min(3, complete_steps(codes[k])) and start + n <= complete_steps(codes[k])
