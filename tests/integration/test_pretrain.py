"""Stage 2: joint training on the tiny backbone learns, resumes exactly, loads and answers."""

import numpy as np
import pytest
import torch

from fmrilm.config import PretrainConfig, TokenizerConfig
from fmrilm.llm.backbones import get_backbone
from fmrilm.model.fusion import build_model
from fmrilm.model.objectives import description_example, replay_example
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.codes import ScanCodes
from fmrilm.training import train_joint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _setup(seed=0):
    backbone, tok, spec = get_backbone("tiny")
    hidden = backbone.get_input_embeddings().weight.shape[1]
    torch.manual_seed(seed)
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=hidden)
    model, tok = build_model(
        PretrainConfig(llm="tiny"), fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec
    )
    return model, tok


def _scans(n=6, seed=0):
    rng = np.random.default_rng(seed)
    # a learnable temporal rule: every ROI's code at step t+1 is its code at step t plus 1
    out = []
    for i in range(n):
        base = rng.integers(0, 16, size=(3, 5, 1))
        codes = (base + np.arange(4)[None, None, :]) % 16
        out.append(ScanCodes(f"s{i}", codes, [f"Signal level {i % 3} and slow drift."]))
    return out


def _cfg(**kw):
    base = dict(
        llm="tiny", steps=6, batch_size=2, span_patches=3, log_every=2, ckpt_every=3, warmup=1,
        lr=1e-2, new_params_lr=1e-2, bf16="off",
    )  # fmt: skip
    base.update(kw)
    return PretrainConfig(**base)


def test_examples_mask_only_what_is_learned():
    model, tok = _setup()
    ex = description_example(model.vocab, tok, np.zeros((3, 2), dtype=int), "a short answer")
    answer_ids = tok("a short answer", add_special_tokens=False)["input_ids"]
    masked = [i for i, m in zip(ex.ids, ex.loss_mask, strict=True) if m]
    assert masked[: len(answer_ids)] == answer_ids and masked[-1] == tok.eos_token_id
    assert model.vocab.start in ex.ids and model.vocab.end in ex.ids
    rep = replay_example(tok, "plain words")
    assert all(rep.loss_mask[1:])


def test_joint_training_learns_and_resumes_exactly(tmp_path, monkeypatch):
    replay = ["The river flows to the sea.", "Bread is baked in an oven."]
    model, tok = _setup()
    summary = train_joint(
        model, tok, _scans(), replay, _cfg(steps=12), tmp_path / "a", log=lambda s: None
    )
    first, last = summary["history"][0], summary["history"][-1]
    assert last["temporal_loss"] < first["temporal_loss"]
    assert {"description_loss", "replay_loss", "fmri_acc", "tokens_per_s"} <= set(last)

    # straight 6 steps vs 3 steps + resume to 6: identical trainable weights
    m1, tok1 = _setup()
    train_joint(m1, tok1, _scans(), replay, _cfg(), tmp_path / "b", log=lambda s: None)
    from fmrilm.training import joint as pretrain

    real = pretrain.sample_step

    def crash_at_3(step, *args):
        if step == 3:
            raise RuntimeError("simulated crash after the step-3 checkpoint")
        return real(step, *args)

    m2, tok2 = _setup()
    monkeypatch.setattr(pretrain, "sample_step", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_joint(m2, tok2, _scans(), replay, _cfg(), tmp_path / "c", log=lambda s: None)
    monkeypatch.undo()
    m3, tok3 = _setup()
    lines = []
    train_joint(m3, tok3, _scans(), replay, _cfg(), tmp_path / "c", log=lines.append)
    assert any(line.startswith("resuming from") for line in lines)
    a = {n: p for n, p in m1.named_parameters() if p.requires_grad}
    b = {n: p for n, p in m3.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the log interval cut by the crash (steps 3-4) reports the same losses as without it
    import json

    from fmrilm.checkpoint import read_checkpoint_meta

    def losses(run):
        hist = read_checkpoint_meta(tmp_path / run / "checkpoint.safetensors")["history"]
        return [{k: v for k, v in h.items() if k != "tokens_per_s"} for h in hist]

    assert json.dumps(losses("b")) == json.dumps(losses("c")) and len(losses("b")) == 3


def test_resuming_on_other_inputs_is_refused(tmp_path):
    from fmrilm.errors import FmrilmError

    model, tok = _setup()
    inputs = {"cohort_id": "abc", "train_scans": "0123"}
    train_joint(model, tok, _scans(), [], _cfg(steps=3), tmp_path, inputs=inputs, log=print)
    model, tok = _setup()
    other = {**inputs, "cohort_id": "xyz"}
    with pytest.raises(FmrilmError, match=r"other inputs \(cohort_id\)"):
        train_joint(model, tok, _scans(), [], _cfg(steps=6), tmp_path, inputs=other, log=print)


def test_save_and_load_give_the_same_model(tmp_path):
    from fmrilm.model.fusion import load_model, save_model

    model, tok = _setup()
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=model.fmri_embed.weight.shape[1])
    cfg = _cfg(steps=2)
    train_joint(model, tok, _scans(), [], cfg, tmp_path / "run", log=lambda s: None)
    save_model(model, tmp_path / "model", cfg, fmri_tok)
    loaded, tok2, fmri2, cfg2 = load_model(tmp_path / "model")
    from fmrilm.model.fusion import FMRILM

    again = FMRILM.from_pretrained(tmp_path / "model")
    assert again.pretrain_config == cfg and len(again.text_tokenizer) == len(tok)
    assert again.fmri_tokenizer.config == fmri_tok.config
    ids = torch.tensor([model.vocab.span(np.arange(6).reshape(3, 2)) + [5, 6, 7]])
    model.eval()
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    assert torch.allclose(a["fmri_loss"], b["fmri_loss"]) and torch.allclose(
        a["text_loss"], b["text_loss"]
    )
    assert cfg2 == cfg and len(tok2) == len(tok)
    # describe / ask a scan given as an array + ROI table: text out, deterministic (greedy)
    import pandas as pd

    rois = pd.DataFrame({"name": ["a", "b", "c"], "x": [-40, 0, 40], "y": [0, 20, -20],
                         "z": [10, 30, 50], "network": ["Default", "Visual", "Default"]})  # fmt: skip
    series = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    text = again.describe(series, atlas=rois, tr=2.0, max_new_tokens=5)
    assert isinstance(text, str) and text == again.describe(
        series, atlas=rois, tr=2.0, max_new_tokens=5
    )
    assert isinstance(again.ask(series, "Which task?", atlas=rois, tr=2.0, max_new_tokens=3), str)
    from fmrilm.errors import FmrilmError

    with pytest.raises(FmrilmError, match="window=9"):
        again.describe(series, atlas=rois, tr=2.0, window=9)
    with pytest.raises(FmrilmError, match="pass atlas="):
        again.describe(series, tr=2.0)
    with pytest.raises(FmrilmError, match="from_pretrained"):
        loaded.describe(series, atlas=rois, tr=2.0)
    # a changed weights file is refused
    (tmp_path / "model" / "trainable.safetensors").write_bytes(b"garbage")
    with pytest.raises(FmrilmError, match="checksum"):
        load_model(tmp_path / "model")


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU), plain or FSDP, gives the single-process weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    worker = str(Path(__file__).with_name("ddp_pretrain_worker.py"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = str(tmp_path / "one.safetensors"), str(tmp_path / "two.safetensors")
    subprocess.run([sys.executable, worker, one], check=True, env=env, timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", worker, two]  # fmt: skip

    def torchrun(argv):
        # gloo can rarely abort a process at interpreter exit ("terminate called without an
        # active exception", after the group was destroyed): one retry for that case only
        for attempt in (0, 1):
            run = subprocess.run(argv, env=env, timeout=300, capture_output=True, text=True)
            known = "terminate called without an active exception" in run.stderr
            if run.returncode == 0 or not known or attempt:
                assert run.returncode == 0, run.stderr[-3000:]
                return

    torchrun(cmd)
    # the same with the frozen backbone sharded by FSDP2 (fully_shard) across the 2 processes
    sharded = str(tmp_path / "fsdp.safetensors")
    cmd[-1] = sharded
    torchrun([*cmd, "--fsdp"])
    from safetensors import safe_open

    with safe_open(sharded, framework="pt") as fh:
        assert int(fh.metadata()["sharded"]) > 0  # the frozen weights were DTensor shards
    with safe_open(two, framework="pt") as fh:
        assert int(fh.metadata()["sharded"]) == 0
    a, b, c = load_file(one), load_file(two), load_file(sharded)
    assert a.keys() == b.keys() == c.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
        assert torch.allclose(a[k], c[k], atol=1e-5, rtol=1e-4), k
    # the runs did train: the LoRA B matrices left their zero initialisation
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)


def test_ctrl_c_checkpoints_and_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import os
    import signal

    from fmrilm.checkpoint import read_checkpoint_meta
    from fmrilm.training import joint as pretrain

    real = pretrain.sample_step

    def ctrl_c_at_4(step, *args):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # deferred: the step finishes first
        return real(step, *args)

    model, tok = _setup()
    monkeypatch.setattr(pretrain, "sample_step", ctrl_c_at_4)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train_joint(model, tok, _scans(), [], _cfg(), tmp_path / "run", log=lines.append)
    assert any("interrupted: checkpoint at step 5" in line for line in lines)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    assert read_checkpoint_meta(ckpt)["step"] == 5
    before = ckpt.read_bytes()

    # the disk fills up while the next checkpoint is written: the old one stays whole
    def full_disk(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pretrain, "sample_step", real)
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    model, tok = _setup()
    with pytest.raises(OSError, match="No space left"):
        train_joint(model, tok, _scans(), [], _cfg(), tmp_path / "run", log=lambda s: None)
    assert ckpt.read_bytes() == before
    assert not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_tokenizer_aligned_to_another_llm_is_refused():
    from fmrilm.errors import FmrilmError

    backbone, tok, spec = get_backbone("tiny")
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=576)  # aligned to SmolLM2
    with pytest.raises(FmrilmError, match="projects codes to 576 dimensions"):
        build_model(PretrainConfig(llm="tiny"), fmri_tok, backbone, tok, spec)


def test_continuous_projector_ablation_trains_and_places_vectors(tmp_path):
    from fmrilm.model.objectives import collate, temporal_example

    backbone, tok, spec = get_backbone("tiny")
    hidden = backbone.config.hidden_size
    torch.manual_seed(0)
    fmri_tok = FMRITokenizer(TokenizerConfig.tiny(), llm_dim=hidden)
    cfg = _cfg(fmri_input="continuous", steps=4)
    model, tok = build_model(cfg, fmri_tok, backbone=backbone, text_tokenizer=tok, spec=spec)
    assert model.projector is not None and all(
        p.requires_grad for p in model.projector.parameters()
    )
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(3, 2))
    vecs = rng.normal(size=(3, 2, 8)).astype(np.float32)
    ex = temporal_example(model.vocab, codes, vecs)
    batch = collate([ex], tok.pad_token_id, vocab=model.vocab)
    pos = torch.nonzero(
        (batch["ids"][0] >= model.vocab.text_size) & (batch["ids"][0] < model.vocab.start)
    )
    # time-major order: codes of step 0 (3 ROIs) then step 1
    assert torch.allclose(batch["vectors"][0, pos[0, 0]], torch.from_numpy(vecs[0, 0]))
    assert torch.allclose(batch["vectors"][0, pos[3, 0]], torch.from_numpy(vecs[0, 1]))
    e = model.embed(batch["ids"], batch["vectors"])[0]
    assert torch.allclose(e[pos[0, 0]], model.projector(torch.from_numpy(vecs[0, 0])))
    scans = [
        ScanCodes(
            s.scan_id, s.codes, s.texts, rng.normal(size=(*s.codes.shape, 8)).astype(np.float32)
        )
        for s in _scans()
    ]
    out = train_joint(model, tok, scans, [], cfg, tmp_path / "cont", log=lambda s: None)
    assert "temporal_loss" in out["history"][-1]
