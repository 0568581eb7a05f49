"""The cohort store: exact round trips, append/resume rules, crash safety and corruption checks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fmrilm.data.cohort as cohort_module
from fmrilm.data.atlas import Atlas
from fmrilm.data.cohort import BASE_COLUMNS, Cohort, CohortWriter
from fmrilm.data.scan import Scan
from fmrilm.errors import FmrilmError
from fmrilm.io import write_json, write_parquet

N_ROIS = 5
PRE = {"detrend": True, "scaling": "robust", "high_pass": 0.01}
SRC_ROOT = Path(__file__).resolve().parents[2] / "src"


def toy_atlas(name: str = "toy", n: int = N_ROIS) -> Atlas:
    rois = pd.DataFrame(
        {
            "name": [f"R{i}" for i in range(n)],
            "x": np.arange(n, dtype=float),
            "y": -np.arange(n, dtype=float),
            "z": np.full(n, 2.5),
            "network": ["Default"] * n,
        }
    )
    return Atlas(name, rois)


def series(seed: int, n_frames: int = 20, n_rois: int = N_ROIS) -> np.ndarray:
    """Deterministic float32 data with values that do not survive a float64 -> float32 mix-up."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_frames, n_rois)) * 1e3 + np.pi).astype(np.float32)


def make_scan(subject: str, seed: int | None = None, n_frames: int = 20, **kw) -> Scan:
    seed = int(subject) if seed is None else seed
    kw.setdefault("atlas", "toy")
    return Scan(series(seed, n_frames), tr=kw.pop("tr", 0.72), subject=subject, **kw)


def write(root: Path, scans: list[Scan], mode: str = "create", **kw) -> CohortWriter:
    with CohortWriter(root, preprocessing=kw.pop("preprocessing", PRE), mode=mode, **kw) as w:
        w.add_atlas(toy_atlas())
        for s in scans:
            w.add(s)
    return w


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a cohort, by relative path (a byte-exact 'unchanged' check)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# -- round trips ---------------------------------------------------------------------------
def test_data_round_trip_is_exact_float32(tmp_path):
    scans = [make_scan(str(i), n_frames=10 + 7 * i) for i in range(1, 5)]
    write(tmp_path / "c", scans)
    cohort = Cohort(tmp_path / "c")
    assert len(cohort) == 4
    for s in scans:
        x = cohort.series(s.scan_id)
        assert isinstance(x, np.memmap) and not x.flags.writeable
        assert x.dtype == np.float32 and x.shape == (s.n_frames, N_ROIS)
        np.testing.assert_array_equal(x, s.data)
    # integer keys address manifest rows in insertion order
    np.testing.assert_array_equal(cohort.series(2), scans[2].data)
    # offsets are element counts, packed back to back in one shard
    m = cohort.manifest
    assert m["shard"].nunique() == 1
    np.testing.assert_array_equal(m["offset"], np.cumsum([0] + [s.data.size for s in scans[:-1]]))
    shard = tmp_path / "c" / "arrays" / m["shard"].iloc[0]
    raw = np.fromfile(shard, dtype="<f4")
    np.testing.assert_array_equal(raw, np.concatenate([s.data.ravel() for s in scans]))


def test_metadata_round_trip(tmp_path):
    scan = make_scan(
        "7",
        session="2",
        run="1",
        site="oxford",
        paradigm="task",
        task="nback",
        tr=1.5,
        qc={"tsnr": 55.5, "fd_mean": 0.12},
        source="ukb/7",
    )
    no_qc = make_scan("8", site="leeds")
    write(tmp_path / "c", [scan, no_qc], description="toy cohort")
    cohort = Cohort(tmp_path / "c")
    m = cohort.manifest
    assert list(m.columns) == list(BASE_COLUMNS)
    row = m.iloc[0]
    assert row["scan_id"] == "sub-7_ses-2_task-nback_run-1"
    assert (row["subject"], row["session"], row["run"], row["site"]) == ("7", "2", "1", "oxford")
    assert (row["paradigm"], row["task"], row["atlas"], row["source"]) == (
        "task",
        "nback",
        "toy",
        "ukb/7",
    )
    assert (row["tr"], row["n_frames"], row["n_rois"], row["split"]) == (1.5, 20, N_ROIS, "")
    assert (row["qc_tsnr"], row["qc_fd_mean"]) == (55.5, 0.12)
    assert np.isnan(m.iloc[1]["qc_tsnr"])
    assert m["n_frames"].dtype == np.int64 and m["offset"].dtype == np.int64
    assert m["tr"].dtype == np.float64

    back = cohort.scan("sub-7_ses-2_task-nback_run-1")
    assert back.scan_id == scan.scan_id
    assert (back.site, back.paradigm, back.task, back.tr, back.source) == (
        "oxford",
        "task",
        "nback",
        1.5,
        "ukb/7",
    )
    assert back.qc == {"tsnr": 55.5, "fd_mean": 0.12}
    assert cohort.scan(1).qc == {}
    np.testing.assert_array_equal(back.data, scan.data)

    meta = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert meta["format"] == "fmrilm-cohort" and meta["version"] == 1
    assert meta["preprocessing"] == PRE and cohort.preprocessing == PRE
    assert meta["description"] == "toy cohort" and meta["n_scans"] == 2
    assert len(meta["cohort_id"]) == 32

    atlas = cohort.atlas("toy")
    assert atlas.names == toy_atlas().names
    np.testing.assert_array_equal(atlas.coords, toy_atlas().coords)
    assert atlas.networks == ["Default"] * N_ROIS
    with pytest.raises(FmrilmError, match="no scan with id 'sub-99_task-rest'"):
        cohort.series("sub-99_task-rest")


def test_phenotypes_typed_numeric_or_categorical(tmp_path):
    scans = [
        make_scan("1", phenotypes={"age": 30, "sex": "F", "group": 1, "dx": "1"}),
        make_scan("2", phenotypes={"age": 41.5, "sex": "M", "group": 2, "dx": "2"}),
        make_scan(
            "3", phenotypes={"sex": "M", "site": "a"}
        ),  # no age; 'site' clashes with a column
    ]
    write(tmp_path / "c", scans)
    cohort = Cohort(tmp_path / "c")
    assert cohort.meta["phenotypes"] == {
        "age": "numeric",
        "sex": "categorical",
        "group": "numeric",
        "dx": "categorical",  # digits given as strings stay labels
        "pheno_site": "categorical",
    }
    m = cohort.manifest
    assert m["age"].dtype == np.float64
    np.testing.assert_array_equal(m["age"].to_numpy(), [30.0, 41.5, np.nan])
    assert m["sex"].tolist() == ["F", "M", "M"]
    assert m["dx"].tolist()[:2] == ["1", "2"] and pd.isna(m["dx"].iloc[2])
    assert m["site"].tolist() == ["", "", ""]
    assert m["pheno_site"].isna().tolist() == [True, True, False] and m["pheno_site"].iloc[2] == "a"
    assert cohort.scan(0).phenotypes == {"age": 30.0, "sex": "F", "group": 1.0, "dx": "1"}
    assert cohort.scan(2).phenotypes == {"sex": "M", "pheno_site": "a"}
    labels = cohort.summary()["labels"]
    assert labels["age"] == {
        "type": "numeric",
        "n": 2,
        "mean": 35.75,
        "std": 8.132,
        "min": 30.0,
        "max": 41.5,
    }
    assert labels["sex"] == {"type": "categorical", "counts": {"M": 2, "F": 1}}


def test_phenotype_type_kept_across_appends(tmp_path):
    write(tmp_path / "c", [make_scan("1", phenotypes={"age": 30})])
    with pytest.raises(FmrilmError, match="phenotype 'age' is numeric in the cohort"):
        write(tmp_path / "c", [make_scan("2", phenotypes={"age": "thirty"})], mode="append")
    assert Cohort(tmp_path / "c").scan_ids == ["sub-1_task-rest"]


def test_events_round_trip(tmp_path):
    events = pd.DataFrame(
        {
            "onset": [0.0, 12.5, 30.0],
            "duration": [10.0, 10.0, 2.5],
            "trial_type": ["0back", "2back", "cue"],
        }
    )
    extra = events.assign(extra=1)  # columns besides the BIDS three are not stored
    scans = [
        make_scan("1", paradigm="task", task="nback", events=extra),
        make_scan("2"),
        make_scan("3", paradigm="task", task="nback", events=events.iloc[:1]),
    ]
    write(tmp_path / "c", scans)
    cohort = Cohort(tmp_path / "c")
    pd.testing.assert_frame_equal(cohort.events("sub-1_task-nback"), events)
    pd.testing.assert_frame_equal(cohort.events("sub-3_task-nback"), events.iloc[:1])
    assert cohort.events("sub-2_task-rest") is None
    assert cohort.scan("sub-2_task-rest").events is None
    pd.testing.assert_frame_equal(cohort.scan("sub-1_task-nback").events, events)


def test_empty_commit_creates_an_empty_cohort(tmp_path):
    # regression: committing no scans into a new cohort raised KeyError('scan_id')
    write(tmp_path / "c", [])
    assert len(Cohort(tmp_path / "c")) == 0
    write(tmp_path / "c", [make_scan("1")], mode="append")
    np.testing.assert_array_equal(Cohort(tmp_path / "c").series(0), series(1))


# -- modes -----------------------------------------------------------------------------------
def test_append_adds_scans_and_keeps_old_ones(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")])
    cohort_id = Cohort(root).meta["cohort_id"]
    old = snapshot(root / "arrays")
    w = write(root, [make_scan("3"), make_scan("4", phenotypes={"age": 20})], mode="append")
    assert (w.n_added, w.n_skipped) == (2, 0)
    cohort = Cohort(root)
    assert cohort.scan_ids == [f"sub-{i}_task-rest" for i in (1, 2, 3, 4)]
    assert cohort.meta["cohort_id"] == cohort_id
    for i in (1, 2, 3, 4):
        np.testing.assert_array_equal(cohort.series(f"sub-{i}_task-rest"), series(i))
    assert cohort.manifest["shard"].nunique() == 2  # appends open a new shard ...
    assert all(snapshot(root / "arrays")[k] == v for k, v in old.items())  # ... and never rewrite
    np.testing.assert_array_equal(cohort.manifest["age"].to_numpy(), [np.nan] * 3 + [20.0])


def test_create_on_existing_cohort_refused(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")])
    before = snapshot(root)
    with pytest.raises(
        FmrilmError,
        match=r"already holds a cohort \(2 scans\); choose another --out, or extend it with .data import --append.",
    ):
        CohortWriter(root, preprocessing=PRE, mode="create")
    assert snapshot(root) == before


def test_unknown_mode_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be create, append or resume, got 'overwrite'"):
        CohortWriter(tmp_path / "c", preprocessing=PRE, mode="overwrite")


@pytest.mark.parametrize("queued_first", [False, True])
def test_duplicate_scan_id_on_append_refused_and_cohort_unchanged(tmp_path, queued_first):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")], shard_mb=1e-4)
    before = snapshot(root)
    new = [make_scan("3")] if queued_first else []
    with pytest.raises(FmrilmError, match="duplicate scan id sub-2_task-rest: .* already holds it"):
        write(root, [*new, make_scan("2", seed=99)], mode="append")
    assert snapshot(root) == before  # manifest, cohort.json and shard bytes identical
    assert Cohort(root).scan_ids == ["sub-1_task-rest", "sub-2_task-rest"]
    np.testing.assert_array_equal(Cohort(root).series("sub-2_task-rest"), series(2))


def test_duplicate_scan_id_within_one_import_refused(tmp_path):
    with pytest.raises(FmrilmError, match="duplicate scan id sub-1_task-rest"):
        write(tmp_path / "c", [make_scan("1"), make_scan("1", seed=5)])
    assert not (tmp_path / "c" / "manifest.parquet").exists()


def test_resume_skips_stored_ids(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")])
    with CohortWriter(root, preprocessing=PRE, mode="resume") as w:
        w.add_atlas(toy_atlas())
        assert w.has("sub-1_task-rest") and not w.has("sub-3_task-rest")
        added = [w.add(make_scan(s, seed=100 + int(s))) for s in ("1", "2", "3")]
    assert added == [False, False, True]
    assert (w.n_added, w.n_skipped) == (1, 2)
    cohort = Cohort(root)
    assert cohort.scan_ids == ["sub-1_task-rest", "sub-2_task-rest", "sub-3_task-rest"]
    np.testing.assert_array_equal(cohort.series("sub-1_task-rest"), series(1))  # not overwritten
    np.testing.assert_array_equal(cohort.series("sub-3_task-rest"), series(103))


def test_append_with_different_preprocessing_refused(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    before = snapshot(root)
    other = {**PRE, "scaling": "zscore"}
    for mode in ("append", "resume"):
        with pytest.raises(FmrilmError, match="holds a different cohort") as err:
            CohortWriter(root, preprocessing=other, mode=mode)
        assert "scaling='robust' (this import: 'zscore')" in str(err.value)
    assert snapshot(root) == before


def test_non_empty_folder_without_cohort_refused(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    for mode in ("create", "append", "resume"):
        with pytest.raises(FmrilmError, match="is not empty and holds no cohort"):
            CohortWriter(root, preprocessing=PRE, mode=mode)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    # a user folder that happens to be called arrays/ is not mistaken for a crashed writer's
    (root / "notes.txt").unlink()
    (root / "arrays").mkdir()
    (root / "arrays" / "data.npy").write_bytes(b"x")
    with pytest.raises(FmrilmError, match="is not empty and holds no cohort"):
        CohortWriter(root, preprocessing=PRE)
    assert (root / "arrays" / "data.npy").read_bytes() == b"x"


def test_mismatched_atlas_refused(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    with CohortWriter(root, preprocessing=PRE, mode="append") as w:
        with pytest.raises(
            FmrilmError, match="already has an atlas named 'toy' with different ROIs"
        ):
            w.add_atlas(toy_atlas(n=N_ROIS + 1))
        with pytest.raises(FmrilmError, match="has 4 ROI columns but the atlas has 5 ROIs"):
            w.add(Scan(series(9, n_rois=4), tr=1.0, subject="9", atlas="toy"))
        with pytest.raises(FmrilmError, match="atlas 'other' was not added"):
            w.add(make_scan("9", atlas="other"))
        with pytest.raises(FmrilmError, match="unknown TR"):
            w.add(make_scan("9", tr=None))
    assert len(Cohort(root)) == 1


# -- shards and crashes ---------------------------------------------------------------------
SCAN_BYTES = 20 * N_ROIS * 4  # 400 bytes per make_scan()
TINY_SHARD_MB = 1000 / 2**20  # a shard closes once it holds >= 1000 bytes: after 3 scans


def test_commit_at_shard_boundaries(tmp_path):
    root = tmp_path / "c"
    scans = [make_scan(str(i)) for i in range(1, 11)]
    write(root, scans, shard_mb=TINY_SHARD_MB)
    cohort = Cohort(root)
    m = cohort.manifest
    shards = sorted(p.name for p in (root / "arrays").iterdir())
    assert shards == [f"shard-{i:06d}.f32" for i in range(4)]
    assert m.groupby("shard").size().tolist() == [3, 3, 3, 1]
    assert m["offset"].tolist() == [0, 100, 200] * 3 + [0]
    sizes = [(root / "arrays" / s).stat().st_size for s in shards]
    assert sizes == [3 * SCAN_BYTES] * 3 + [SCAN_BYTES]
    for s in scans:
        np.testing.assert_array_equal(cohort.series(s.scan_id), s.data)


def test_scans_of_closed_shards_survive_an_exception(tmp_path):
    root = tmp_path / "c"
    with pytest.raises(RuntimeError, match="boom"):
        with CohortWriter(root, preprocessing=PRE, shard_mb=TINY_SHARD_MB) as w:
            w.add_atlas(toy_atlas())
            for i in range(1, 8):  # 7 scans: shards of 3 and 3 are committed, 1 scan is pending
                w.add(make_scan(str(i)))
            raise RuntimeError("boom")
    cohort = Cohort(root)
    assert cohort.scan_ids == [f"sub-{i}_task-rest" for i in range(1, 7)]
    assert sorted(p.name for p in (root / "arrays").iterdir()) == [
        "shard-000000.f32",
        "shard-000001.f32",
    ]
    assert w.n_added == 6


def test_exception_in_block_keeps_previous_commit(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")])
    before = snapshot(root)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with CohortWriter(root, preprocessing=PRE, mode="append") as w:
            w.add_atlas(toy_atlas())
            w.add(make_scan("3"))
            assert any(p.name.endswith(".tmp") for p in (root / "arrays").iterdir())
            raise RuntimeError("disk on fire")
    assert snapshot(root) == before  # the open shard's temporary file is gone
    assert not w.has("sub-3_task-rest") and w.n_added == 0
    write(root, [make_scan("3")], mode="append")
    np.testing.assert_array_equal(Cohort(root).series("sub-3_task-rest"), series(3))


def test_leftover_tmp_and_unreferenced_shard_cleaned_by_next_writer(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    arrays = root / "arrays"
    (arrays / ".shard-000001.f32.tmp").write_bytes(b"\0" * 13)  # killed mid-write
    (arrays / "shard-000001.f32").write_bytes(series(50).tobytes())  # renamed, never committed
    (root / ".manifest.parquet.abc123.tmp").write_bytes(b"half a parquet")  # killed atomic write
    cohort = Cohort(root)  # readers ignore unreferenced files
    np.testing.assert_array_equal(cohort.series(0), series(1))
    write(root, [make_scan("2")], mode="append")
    assert sorted(p.name for p in arrays.iterdir()) == ["shard-000000.f32", "shard-000001.f32"]
    assert not (root / ".manifest.parquet.abc123.tmp").exists()
    cohort = Cohort(root)
    np.testing.assert_array_equal(cohort.series("sub-2_task-rest"), series(2))  # not the orphan
    assert (arrays / "shard-000001.f32").stat().st_size == SCAN_BYTES


def test_killed_process_leaves_last_commit_and_resume_finishes(tmp_path):
    root = tmp_path / "c"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cohort import make_scan, toy_atlas, PRE, TINY_SHARD_MB
        from fmrilm.data.cohort import CohortWriter
        with CohortWriter({str(root)!r}, preprocessing=PRE, shard_mb=TINY_SHARD_MB) as w:
            w.add_atlas(toy_atlas())
            for i in range(1, 6):
                w.add(make_scan(str(i)))
            os._exit(3)  # no __exit__, no discard: like SIGKILL or a power cut
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert sorted(p.name for p in (root / "arrays").iterdir()) == [
        ".shard-000001.f32.tmp",
        "shard-000000.f32",
    ]
    assert Cohort(root).scan_ids == [f"sub-{i}_task-rest" for i in (1, 2, 3)]
    w = write(root, [make_scan(str(i)) for i in range(1, 7)], mode="resume", shard_mb=TINY_SHARD_MB)
    assert (w.n_added, w.n_skipped) == (3, 3)
    cohort = Cohort(root)
    assert sorted(p.name for p in (root / "arrays").iterdir()) == [
        "shard-000000.f32",
        "shard-000001.f32",
    ]
    for i in range(1, 7):
        np.testing.assert_array_equal(cohort.series(f"sub-{i}_task-rest"), series(i))


def test_crash_after_shard_rename_before_manifest(tmp_path, monkeypatch):
    # regression: events written before the failed commit were duplicated by the resumed import
    root = tmp_path / "c"
    events = pd.DataFrame({"onset": [1.0], "duration": [2.0], "trial_type": ["go"]})
    write(root, [make_scan("1", paradigm="task", task="go", events=events)])
    manifest_before = (root / "manifest.parquet").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(cohort_module, "write_json", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write(root, [make_scan("2", paradigm="task", task="go", events=events)], mode="append")
    monkeypatch.undo()
    assert (root / "arrays" / "shard-000001.f32").exists()  # complete, but unreferenced
    assert (root / "manifest.parquet").read_bytes() == manifest_before
    assert Cohort(root).scan_ids == ["sub-1_task-go"]

    write(root, [make_scan("2", paradigm="task", task="go", events=events)], mode="resume")
    cohort = Cohort(root)
    assert cohort.scan_ids == ["sub-1_task-go", "sub-2_task-go"]
    pd.testing.assert_frame_equal(cohort.events("sub-2_task-go"), events)
    assert len(pd.read_parquet(root / "events.parquet")) == 2


def test_crash_before_first_commit_can_be_resumed(tmp_path):
    # regression: the arrays/ and atlases/ folders left behind made the folder "not empty"
    root = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        with CohortWriter(root, preprocessing=PRE) as w:
            w.add_atlas(toy_atlas())
            w.add(make_scan("1"))
            raise KeyboardInterrupt
    with pytest.raises(FmrilmError, match="is not an fmrilm cohort"):
        Cohort(root)
    w = write(root, [make_scan("1"), make_scan("2")], mode="resume")
    assert w.n_added == 2
    np.testing.assert_array_equal(Cohort(root).series("sub-2_task-rest"), series(2))


def test_atlas_stored_by_a_crashed_append_can_be_used(tmp_path):
    # regression: add_atlas found the table left by the crashed run and returned without
    # registering it, so every scan was refused with "atlas 'other' was not added"
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    with pytest.raises(RuntimeError):
        with CohortWriter(root, preprocessing=PRE, mode="append") as w:
            w.add_atlas(toy_atlas("other", n=3))
            raise RuntimeError
    with CohortWriter(root, preprocessing=PRE, mode="append") as w:
        w.add_atlas(toy_atlas("other", n=3))
        w.add(Scan(series(2, n_rois=3), tr=2.0, subject="2", atlas="other"))
    cohort = Cohort(root)
    assert cohort.manifest["atlas"].tolist() == ["toy", "other"]
    np.testing.assert_array_equal(cohort.series("sub-2_task-rest"), series(2, n_rois=3))


def test_crash_between_first_cohort_json_and_manifest(tmp_path, monkeypatch):
    # regression: append/resume raised a raw FileNotFoundError for the missing manifest
    root = tmp_path / "c"
    real = cohort_module.write_parquet

    def fail_on_manifest(path, df):
        if Path(path).name == "manifest.parquet":
            raise OSError("killed")
        real(path, df)

    monkeypatch.setattr(cohort_module, "write_parquet", fail_on_manifest)
    with pytest.raises(OSError, match="killed"):
        write(root, [make_scan("1")])
    monkeypatch.undo()
    with pytest.raises(FmrilmError, match="cohort has no manifest.parquet"):
        Cohort(root)
    write(root, [make_scan("1"), make_scan("2")], mode="resume")
    cohort = Cohort(root)
    assert cohort.scan_ids == ["sub-1_task-rest", "sub-2_task-rest"]
    np.testing.assert_array_equal(cohort.series(0), series(1))


# -- corruption ------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_bytes", [0, SCAN_BYTES + 6, SCAN_BYTES + 200])
def test_truncated_shard_raises_on_read(tmp_path, keep_bytes):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("2")])
    shard = root / "arrays" / "shard-000000.f32"
    shard.write_bytes(shard.read_bytes()[:keep_bytes])
    cohort = Cohort(root)
    with pytest.raises(FmrilmError, match="shard shard-000000.f32 is truncated"):
        cohort.series("sub-2_task-rest")
    if keep_bytes % 4 == 0 and keep_bytes >= SCAN_BYTES:  # intact scans before the cut still read
        np.testing.assert_array_equal(cohort.series("sub-1_task-rest"), series(1))


def test_missing_shard_raises_on_read(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    (root / "arrays" / "shard-000000.f32").unlink()
    with pytest.raises(
        FmrilmError, match="shard shard-000000.f32 referenced by the manifest is missing"
    ):
        Cohort(root).series(0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "cohort format version 2 is not supported by this fmrilm"),
        ({"format": "something-else"}, "not an fmrilm cohort"),
    ],
)
def test_other_format_refused(tmp_path, change, message):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    meta = json.loads((root / "cohort.json").read_text())
    write_json(root / "cohort.json", {**meta, **change})
    with pytest.raises(FmrilmError, match=message):
        Cohort(root)
    for mode in ("append", "resume"):
        with pytest.raises(FmrilmError, match=message):
            CohortWriter(root, preprocessing=PRE, mode=mode)


def test_corrupt_metadata_files_refused(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1")])
    (root / "manifest.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(FmrilmError, match="manifest.parquet: cannot read"):
        Cohort(root)
    (root / "cohort.json").write_text("{")
    with pytest.raises(FmrilmError, match="cohort.json: corrupt JSON"):
        Cohort(root)
    with pytest.raises(FmrilmError, match="does not exist"):
        Cohort(tmp_path / "nowhere")


# -- splits in the store ---------------------------------------------------------------------
def test_split_refuses_leakage(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("1", seed=2, session="2"), make_scan("3")])
    m = pd.read_parquet(root / "manifest.parquet")
    m["split"] = ["train", "test", "test"]  # subject 1 in train and test
    write_parquet(root / "manifest.parquet", m)
    with pytest.raises(FmrilmError, match=r"split leakage: 1 subject\(s\) .* \['1'\]"):
        Cohort(root).split("train")


def test_set_splits_stores_and_checks(tmp_path):
    root = tmp_path / "c"
    write(root, [make_scan("1"), make_scan("1", seed=2, session="2"), make_scan("3")])
    cohort = Cohort(root)
    before = (root / "manifest.parquet").read_bytes()
    with pytest.raises(FmrilmError, match="split leakage"):
        cohort.set_splits(pd.Series(["train", "val", "test"], index=cohort.manifest.index))
    assert (root / "manifest.parquet").read_bytes() == before
    cohort.set_splits(pd.Series(["train", "train", "test"], index=cohort.manifest.index))
    reread = Cohort(root)
    assert reread.split("train")["scan_id"].tolist() == ["sub-1_task-rest", "sub-1_ses-2_task-rest"]
    assert reread.split("test")["subject"].tolist() == ["3"]
    with pytest.raises(FmrilmError, match="the 'val' split is empty"):
        reread.split("val")
    with pytest.raises(FmrilmError, match="split must be one of"):
        reread.split("holdout")
