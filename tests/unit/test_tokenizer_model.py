"""The neural tokenizer's parts: cosine VQ, atlas-free encoding, decoding, persistence."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fmrilm.config import TokenizerConfig
from fmrilm.data.networks import NETWORKS
from fmrilm.errors import FmrilmError
from fmrilm.tokenizer import FMRITokenizer, RoiGeometry, Tokens
from fmrilm.tokenizer.neural_tokenizer import CONFIG_FILE, WEIGHTS_FILE
from fmrilm.tokenizer.quantizer import CosineVectorQuantizer, code_statistics

TR = 2.0  # the tiny config's TR: series given at this TR are not resampled


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one intra-op thread is faster, and robust to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(**kw) -> TokenizerConfig:
    return TokenizerConfig.tiny(**{"tr": TR, **kw})


def roi_table(n: int, seed: int = 0) -> pd.DataFrame:
    """A made-up atlas: random MNI centroids, network labels (one unknown to the vocabulary)."""
    rng = np.random.default_rng(seed)
    nets = [NETWORKS[i % len(NETWORKS)] for i in range(n)]
    nets[-1] = "NotANetwork"
    return pd.DataFrame(
        {
            "name": [f"roi{i}" for i in range(n)],
            "x": rng.uniform(-70, 70, n),
            "y": rng.uniform(-100, 70, n),
            "z": rng.uniform(-40, 75, n),
            "network": nets,
        }
    )


def series(frames: int, rois: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((frames, rois)).cumsum(0) * 0.3 + rng.standard_normal((frames, rois))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return FMRITokenizer(tiny_config()).eval()


# -- quantizer ------------------------------------------------------------------------------


def _quantizer(codebook: torch.Tensor, **kw) -> CosineVectorQuantizer:
    vq = CosineVectorQuantizer(codebook.shape[0], codebook.shape[1], **kw)
    vq.codebook.copy_(F.normalize(codebook, dim=-1))
    vq.embed_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    return vq


def test_ids_are_the_nearest_codes_by_cosine():
    g = torch.Generator().manual_seed(0)
    vq = _quantizer(torch.randn(12, 6, generator=g)).eval()
    z = torch.randn(5, 7, 6, generator=g) * torch.rand(5, 7, 1, generator=g).mul(10).add(0.1)
    q, ids, commit = vq(z)
    assert ids.shape == (5, 7) and q.shape == (5, 7, 6)
    cos = F.cosine_similarity(z.reshape(-1, 1, 6), vq.codebook[None], dim=-1)
    assert torch.equal(ids.reshape(-1), cos.argmax(-1))
    # the output is the code itself (unit vectors), not the input
    torch.testing.assert_close(q.reshape(-1, 6), vq.codebook[ids.reshape(-1)])
    # scale-invariant: only directions matter
    assert torch.equal(vq(z * 37.0)[1], ids)
    # commitment = mean squared distance of the normalised inputs to their codes
    expected = (F.normalize(z.reshape(-1, 6), dim=-1) - vq.codebook[ids.reshape(-1)]).pow(2)
    torch.testing.assert_close(commit, expected.sum(-1).mean())
    # eval mode never touches the codebook
    before = vq.codebook.clone()
    vq(torch.randn(50, 6, generator=g))
    assert torch.equal(vq.codebook, before) and int(vq.restarts) == 0


def test_straight_through_gradient_reaches_the_input():
    g = torch.Generator().manual_seed(1)
    vq = _quantizer(torch.randn(8, 4, generator=g)).eval()
    z = torch.randn(6, 4, generator=g, requires_grad=True)
    w = torch.randn(6, 4, generator=g)
    q, _, _ = vq(z)
    (q * w).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # straight-through: d q / d z is the Jacobian of the normalisation, as if q were normalize(z)
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=-1) * w).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    # the codebook gets no gradient (it is a buffer, updated by EMA only)
    assert not vq.codebook.requires_grad


def test_ema_update_moves_the_assigned_code_towards_its_vectors():
    codes = torch.eye(4)
    vq = _quantizer(codes, decay=0.9, dead_code_threshold=0.01).train()
    target = F.normalize(torch.tensor([1.0, 0.6, 0.0, 0.0]), dim=0)
    z = target.repeat(10, 1) + 0.01 * torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    _, ids, _ = vq(z)
    assert (ids == 0).all()
    flat = F.normalize(z, dim=-1)
    expected = F.normalize(0.9 * codes[0] + 0.1 * flat.sum(0), dim=0)
    torch.testing.assert_close(vq.codebook[0], expected)
    torch.testing.assert_close(vq.cluster_size, torch.tensor([0.9 + 0.1 * 10, 0.9, 0.9, 0.9]))
    assert float(vq.codebook[0] @ target) > float(codes[0] @ target)
    # unassigned codes keep their direction
    torch.testing.assert_close(vq.codebook[1:], codes[1:])
    for _ in range(30):
        vq(z)
    assert float(vq.codebook[0] @ target) > 0.999 and int(vq.restarts) == 0


def test_dead_codes_are_restarted_on_batch_vectors():
    vq = _quantizer(torch.eye(6), decay=0.5, dead_code_threshold=0.3).train()
    g = torch.Generator().manual_seed(3)
    z = torch.tensor([1.0, 0, 0, 0, 0, 0]) + 0.3 * torch.randn(32, 6, generator=g)
    vq(z)  # unused codes decay to 0.5: not dead yet
    assert int(vq.restarts) == 0
    vq(z)  # 0.25 < 0.3: every code that got no vector is restarted
    n_restarted = int(vq.restarts)
    assert n_restarted >= 3
    flat = F.normalize(z, dim=-1)
    restarted = (vq.cluster_size - 4 * 0.3).abs() < 1e-6
    assert int(restarted.sum()) == n_restarted
    # each restarted code is one of the batch's (normalised) vectors
    best = (vq.codebook[restarted] @ flat.t()).max(-1).values
    torch.testing.assert_close(best, torch.ones_like(best))
    # after their grace period, restarted codes that attract nothing are restarted again
    one_direction = F.normalize(torch.ones(16, 6), dim=-1)
    for _ in range(4):
        vq(one_direction)
    assert int(vq.restarts) > n_restarted


def test_first_training_batch_initialises_the_codebook():
    vq = CosineVectorQuantizer(5, 16, dead_code_threshold=0.01)
    z = torch.randn(40, 16, generator=torch.Generator().manual_seed(4))
    vq.eval()(z)
    assert not bool(vq.initialized)  # evaluation does not initialise
    torch.manual_seed(0)
    vq.train()(z)
    assert bool(vq.initialized)
    flat = F.normalize(z, dim=-1)
    best = (vq.codebook @ flat.t()).max(-1).values
    assert (best > 0.97).all()  # a code is an input vector, moved a little by the first EMA step


@pytest.mark.parametrize(
    ("counts", "usage", "perplexity"),
    [
        ([5, 5, 0, 0], 50.0, 2.0),
        ([1] * 8, 100.0, 8.0),
        ([10, 0, 0, 0], 25.0, 1.0),
        ([0, 0, 0], 0.0, 0.0),
        ([3, 1], 100.0, round(float(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))), 2)),
    ],
)
def test_code_statistics(counts, usage, perplexity):
    stats = code_statistics(counts)
    assert stats == {"usage_pct": usage, "perplexity": perplexity}
    assert code_statistics(torch.tensor(counts)) == stats


# -- atlas-free encoding --------------------------------------------------------------------


@pytest.mark.parametrize("n_rois", [10, 25])
def test_one_tokenizer_reads_atlases_of_any_size(tok, n_rois):
    x = series(48, n_rois)
    tokens = tok.encode(x, tr=TR, atlas=roi_table(n_rois))
    assert isinstance(tokens, Tokens)
    assert tokens.ids.shape == (3, n_rois, 4) and tokens.n_windows == 3
    assert tokens.ids.dtype == np.int64
    assert tokens.ids.min() >= 0 and tokens.ids.max() < 16
    np.testing.assert_array_equal(tokens.starts, [0, 16, 32])
    assert tokens.tr == TR and tokens.patch == 4
    # deterministic
    np.testing.assert_array_equal(tok.encode(x, tr=TR, atlas=roi_table(n_rois)).ids, tokens.ids)
    # an fmrilm Atlas works as well as a bare table, and so does a RoiGeometry
    from fmrilm.data.atlas import Atlas

    atlas = Atlas(name="madeup", rois=roi_table(n_rois))
    np.testing.assert_array_equal(tok.encode(x, tr=TR, atlas=atlas).ids, tokens.ids)
    geo = RoiGeometry.from_atlas(roi_table(n_rois))
    assert len(geo) == n_rois and geo.networks[-1] == 0 and geo.networks[0] > 0
    np.testing.assert_array_equal(tok.encode(x, tr=TR, atlas=geo).ids, tokens.ids)


def test_codes_follow_rois_not_their_index(tok):
    """Reordering the ROI table (and the series' columns alike) reorders the codes alike."""
    n = 25
    x, table = series(48, n, seed=5), roi_table(n, seed=5)
    perm = np.random.default_rng(6).permutation(n)
    ids = tok.encode(x, tr=TR, atlas=table).ids
    ids_perm = tok.encode(x[:, perm], tr=TR, atlas=table.iloc[perm]).ids
    # exact: divided attention over ROIs has no ROI position; only coordinates identify an ROI
    np.testing.assert_array_equal(ids_perm, ids[:, perm, :])
    # the continuous encoder output agrees to float precision
    xyz, nets = tok.geometry(table)
    t = torch.from_numpy(tok.prepare(x, TR)[:16][None])
    with torch.no_grad():
        z = tok.encode_vectors(t, xyz, nets)
        z_perm = tok.encode_vectors(t[:, :, perm], xyz[perm], nets[perm])
    torch.testing.assert_close(z_perm, z[:, perm], rtol=0, atol=1e-5)
    # but ROI identity matters: moving the centroids changes the codes
    moved = table.assign(x=-table["x"], y=table["y"] + 40)
    assert (tok.encode(x, tr=TR, atlas=moved).ids != ids).any()


def test_roi_tables_without_usable_coordinates_are_refused(tok):
    x = series(32, 10)
    table = roi_table(10)
    with pytest.raises(FmrilmError, match=r"lacks coordinate columns \['z'\]"):
        tok.encode(x, tr=TR, atlas=table.drop(columns="z"))
    nan = table.copy()
    nan.loc[3, "y"] = np.nan
    with pytest.raises(FmrilmError, match=r"without finite MNI coordinates \(rows \[3\]\)"):
        tok.encode(x, tr=TR, atlas=nan)
    text = table.astype({"x": object})
    text.loc[7, "x"] = "left"
    with pytest.raises(FmrilmError, match=r"rows \[7\]"):
        tok.encode(x, tr=TR, atlas=text)
    with pytest.raises(FmrilmError, match="ROI table is empty"):
        tok.encode(x, tr=TR, atlas=table.iloc[:0])
    with pytest.raises(FmrilmError, match="must be an fmrilm Atlas or a ROI table"):
        tok.encode(x, tr=TR, atlas=table.to_numpy())
    # a network column is optional (all unknown)
    assert tok.encode(x, tr=TR, atlas=table.drop(columns="network")).ids.shape == (2, 10, 4)


def test_bad_series_are_refused_with_the_scan_named(tok):
    table = roi_table(10)
    with pytest.raises(FmrilmError, match="shorter than one patch"):
        tok.encode(series(3, 10), tr=TR, atlas=table)
    # 7 frames at TR 1 s are 3 frames at the tokenizer's TR 2 s: still shorter than a patch
    with pytest.raises(FmrilmError, match=r"sub-01_task-rest: 3 frames at TR 2 s"):
        tok.encode(series(7, 10), tr=1.0, atlas=table, what="sub-01_task-rest")
    x = series(32, 10)
    x[5, 2] = np.nan
    with pytest.raises(FmrilmError, match="sub-07_task-rest: series contains NaN"):
        tok.encode(x, tr=TR, atlas=table, what="sub-07_task-rest")
    x[5, 2] = np.inf
    with pytest.raises(FmrilmError, match="NaN or infinite"):
        tok.encode(x, tr=TR, atlas=table)
    with pytest.raises(FmrilmError, match=r"series has 12 ROIs but the atlas has 10"):
        tok.encode(series(32, 12), tr=TR, atlas=table)
    with pytest.raises(FmrilmError, match=r"expected a \(frames, ROIs\) array"):
        tok.encode(np.zeros(40, dtype=np.float32), tr=TR, atlas=table)
    with pytest.raises(FmrilmError, match="tr .* is required"):
        tok.encode(series(32, 10), atlas=table)


def test_resampling_to_the_tokenizer_tr(tok):
    # 64 frames at TR 1 s = 32 frames at TR 2 s = 2 windows
    tokens = tok.encode(series(64, 10), tr=1.0, atlas=roi_table(10))
    assert tokens.ids.shape == (2, 10, 4)
    # a Scan carries its own TR
    from fmrilm.data.scan import Scan

    scan = Scan(data=series(64, 10), tr=1.0, subject="s1", atlas="madeup")
    np.testing.assert_array_equal(tok.encode(scan, atlas=roi_table(10)).ids, tokens.ids)


def test_decode_shapes_and_short_tail_windows(tok):
    table = roi_table(10)
    # 16 + 16 + 11 frames: the tail keeps 2 whole patches (8 frames); 3 frames are dropped
    tokens = tok.encode(series(43, 10), tr=TR, atlas=table)
    assert tokens.ids.shape == (3, 10, 4)
    np.testing.assert_array_equal(tokens.starts, [0, 16, 32])
    assert (tokens.ids[:2] >= 0).all()
    assert (tokens.ids[2, :, :2] >= 0).all() and (tokens.ids[2, :, 2:] == -1).all()
    # the tail's codes are those of its 8 prepared frames as a 2-patch window
    x = tok.prepare(series(43, 10), TR)
    xyz, nets = tok.geometry(table)
    tail_ids = tok.quantize_windows(torch.from_numpy(x[None, 32:40]), xyz, nets)[0]
    np.testing.assert_array_equal(tail_ids[0].numpy(), tokens.ids[2, :, :2])
    rec = tok.decode(tokens, atlas=table)
    assert [r.shape for r in rec] == [(16, 10), (16, 10), (8, 10)]
    assert all(np.isfinite(r).all() for r in rec)
    # full windows only: one array (windows, frames, ROIs)
    full = tok.encode(series(32, 10), tr=TR, atlas=table)
    out = tok.decode(full.ids, atlas=table)
    assert isinstance(out, np.ndarray) and out.shape == (2, 16, 10)
    # a single window (ROIs, patches) is accepted too, and decoding is deterministic
    np.testing.assert_array_equal(tok.decode(full.ids[1], atlas=table)[0], out[1])
    # a series shorter than one window but at least one patch long: one short window
    short = tok.encode(series(9, 10), tr=TR, atlas=table)
    assert short.ids.shape == (1, 10, 4) and (short.ids[0, :, 2:] == -1).all()
    assert tok.decode(short, atlas=table).shape == (1, 8, 10)


def test_decode_refusals(tok):
    table = roi_table(10)
    ids = tok.encode(series(32, 10), tr=TR, atlas=table).ids
    with pytest.raises(FmrilmError, match=r"code id 16 is outside this tokenizer's codebook"):
        tok.decode(np.full_like(ids, 16), atlas=table)
    with pytest.raises(FmrilmError, match="ids have 10 ROIs but the atlas has 11"):
        tok.decode(ids, atlas=roi_table(11))
    with pytest.raises(FmrilmError, match=r"ids must have shape \(windows, ROIs, patches\)"):
        tok.decode(ids[None], atlas=table)


def test_alignment_heads_are_optional(tok):
    with pytest.raises(FmrilmError, match="without the contrastive text alignment"):
        tok.embed(series(32, 10), tr=TR, atlas=roi_table(10))
    with pytest.raises(FmrilmError, match="no projection into an LLM's embedding space"):
        tok.code_embeddings_for_llm()
    torch.manual_seed(0)
    aligned = FMRITokenizer(tiny_config(), text_dim=12, llm_dim=24).eval()
    v = aligned.embed(series(48, 10), tr=TR, atlas=roi_table(10))
    assert v.shape == (12,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert aligned.code_embeddings_for_llm().shape == (16, 24)


# -- persistence ----------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(1)
    model = FMRITokenizer(tiny_config(), text_dim=12, llm_dim=24)
    # a trained-like state: an initialised codebook and non-default buffers
    model.train()
    model(torch.randn(4, 16, 10), torch.randn(10, 3) * 50, torch.zeros(10, dtype=torch.long))
    model.eval()
    folder = tmp_path / "tok"
    model.save_pretrained(folder, extra={"note": "test"})
    return model, folder


def _set_meta(folder, **changes):
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta.update(changes)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


def test_save_and_load_round_trip(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["format"] == "fmrilm-tokenizer" and meta["format_version"] == 1
    assert meta["note"] == "test" and meta["text_dim"] == 12 and meta["llm_dim"] == 24
    assert meta["preprocessing"]["window_frames"] == 16 and len(meta["weights_sha256"]) == 64
    loaded = FMRITokenizer.from_pretrained(folder)
    assert not loaded.training and loaded.config == model.config
    own, new = model.state_dict(), loaded.state_dict()
    assert own.keys() == new.keys()
    assert all(torch.equal(own[k], new[k]) for k in own)
    table, x = roi_table(25), series(40, 25)
    np.testing.assert_array_equal(
        loaded.encode(x, tr=TR, atlas=table).ids, model.encode(x, tr=TR, atlas=table).ids
    )
    np.testing.assert_array_equal(
        loaded.embed(x, tr=TR, atlas=table), model.embed(x, tr=TR, atlas=table)
    )
    # saving again over the folder is allowed and reproducible
    loaded.save_pretrained(folder)
    assert FMRITokenizer.from_pretrained(folder).config == model.config


def test_refuses_missing_weights(saved):
    _, folder = saved
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FmrilmError, match="model.safetensors is missing"):
        FMRITokenizer.from_pretrained(folder)


def test_refuses_modified_weights(saved):
    _, folder = saved
    data = bytearray((folder / WEIGHTS_FILE).read_bytes())
    data[-3] ^= 0xFF  # one byte of tensor data: still a valid safetensors file
    (folder / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(FmrilmError, match="checksum does not match config.json"):
        FMRITokenizer.from_pretrained(folder)


def test_refuses_other_format_versions_and_corrupt_config(saved):
    _, folder = saved
    good = (folder / CONFIG_FILE).read_text()
    _set_meta(folder, format_version=2)
    with pytest.raises(
        FmrilmError, match="tokenizer format version 2 differs from this fmrilm's 1"
    ):
        FMRITokenizer.from_pretrained(folder)
    (folder / CONFIG_FILE).write_text(good[: len(good) // 2])
    with pytest.raises(FmrilmError, match="corrupt JSON"):
        FMRITokenizer.from_pretrained(folder)
    (folder / CONFIG_FILE).write_text(good)
    _set_meta(folder, network_vocab=["", "Visual"])
    with pytest.raises(FmrilmError, match="network vocabulary differs"):
        FMRITokenizer.from_pretrained(folder)
    (folder / CONFIG_FILE).write_text(good)
    meta = json.loads(good)
    meta["config"]["window"] = 15
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(FmrilmError, match="must be a multiple of patch"):
        FMRITokenizer.from_pretrained(folder)
    meta["config"]["window"] = 16
    meta["config"]["codebook_size"] = 32  # valid config, but the tensors have another shape
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(FmrilmError, match=r"tensor quantizer\.\w+ has shape \(16,.*expected \(32,"):
        FMRITokenizer.from_pretrained(folder)


def test_refuses_partial_weights_even_with_a_matching_checksum(saved):
    from safetensors.torch import load_file, save_file

    from fmrilm.io import sha256_file as _sha256

    _, folder = saved
    state = load_file(str(folder / WEIGHTS_FILE))
    del state["decoder.norm.weight"]
    save_file(state, str(folder / WEIGHTS_FILE))
    _set_meta(folder, weights_sha256=_sha256(folder / WEIGHTS_FILE))
    with pytest.raises(FmrilmError, match=r"missing \['decoder.norm.weight'\]"):
        FMRITokenizer.from_pretrained(folder)
    state["decoder.norm.weight"] = torch.ones(16)
    state["surprise"] = torch.zeros(2)
    save_file(state, str(folder / WEIGHTS_FILE))
    _set_meta(folder, weights_sha256=_sha256(folder / WEIGHTS_FILE))
    with pytest.raises(FmrilmError, match=r"unexpected \['surprise'\]"):
        FMRITokenizer.from_pretrained(folder)
    # not a safetensors file at all (checksum updated to match)
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    _set_meta(folder, weights_sha256=_sha256(folder / WEIGHTS_FILE))
    with pytest.raises(FmrilmError, match="cannot read"):
        FMRITokenizer.from_pretrained(folder)


def test_refuses_folders_that_are_not_tokenizers(tmp_path):
    with pytest.raises(FmrilmError, match=r"is not an fmrilm tokenizer \(no config.json\)"):
        FMRITokenizer.from_pretrained(tmp_path)
    with pytest.raises(FmrilmError, match="is not an fmrilm tokenizer"):
        FMRITokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(FmrilmError, match="config.json is not an fmrilm tokenizer config"):
        FMRITokenizer.from_pretrained(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(FmrilmError, match="not an fmrilm tokenizer config"):
        FMRITokenizer.from_pretrained(tmp_path)


class _Trap:
    """Unpickling this object creates a marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_unpickles(saved, monkeypatch, tmp_path):
    model, folder = saved
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Trap(marker))
    for name in ("pytorch_model.bin", "model.pt", "training_args.bin"):
        (folder / name).write_bytes(payload)

    def forbidden(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    loaded = FMRITokenizer.from_pretrained(folder)
    assert not marker.exists()
    own, new = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(own[k], new[k]) for k in own)
    # the pickle files were ignored, not read: the weights really come from model.safetensors
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FmrilmError, match="model.safetensors is missing"):
        FMRITokenizer.from_pretrained(folder)
    assert not marker.exists()
