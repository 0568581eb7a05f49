"""Corpus build end to end on a small simulated cohort: content, resume, refusals, CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from fmrilm.cli import main
from fmrilm.corpus.build import Corpus, build_corpus
from fmrilm.corpus.norms import CorpusNorms
from fmrilm.corpus.text import leaked_labels, verify
from fmrilm.data.cohort import Cohort
from fmrilm.data.simulate import SimulationConfig, simulate_cohort
from fmrilm.data.splits import assign_splits
from fmrilm.errors import FmrilmError


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "sim"
    simulate_cohort(root, SimulationConfig(n_subjects=16, seed=3, n_tasks=1), progress=False)
    c = Cohort(root)
    c.set_splits(assign_splits(c.manifest, seed=0, stratify="diagnosis"))
    return root


def test_build_content_norms_and_faithfulness(cohort_dir, tmp_path):
    out = tmp_path / "corpus"
    rep = build_corpus(cohort_dir, out, part_size=10, progress=False)
    assert rep["parts_total"] == 4 and rep["scans_written"] == 32
    corpus = Corpus(out)
    assert len(corpus) == 32 and (corpus.table["skipped"] == "").all()
    cohort = Cohort(cohort_dir)
    m = cohort.manifest.set_index("scan_id")
    for _, row in corpus.table.iterrows():
        record = json.loads(row.record)
        assert {"fc.mean", "graph.global_efficiency", "spectral.timescale_s"} <= set(record)
        assert len(row.texts) == 3 and len(set(row.texts)) > 1  # variants differ
        labels = [str(m.loc[row.scan_id, c]) for c in ("sex", "diagnosis", "task")]
        for text in row.texts:
            checked, problems = verify(text, record)
            assert checked >= 5 and problems == []
            assert leaked_labels(text, labels) == []
        has_events = m.loc[row.scan_id, "paradigm"] == "task"
        assert ("task.strongest_networks" in record) == has_events
    # norms come from training scans only: their mean z is ~0, and the test scans' z values
    # use the same statistics
    norms = CorpusNorms.load(out / "norms.json")
    train_ids = set(cohort.manifest.query("split == 'train'")["scan_id"])
    assert norms.atlases["aal2-cortex80"].n_scans == len(train_ids)
    z_train = [
        json.loads(r)["fc.mean"]["z"]
        for s, r in zip(corpus.table.scan_id, corpus.table.record, strict=True)
        if s in train_ids
    ]
    assert abs(np.mean(z_train)) < 1e-3  # z is stored rounded to 3 decimals


def test_resume_is_identical_and_versions_do_not_mix(cohort_dir, tmp_path):
    out = tmp_path / "corpus"
    build_corpus(cohort_dir, out, part_size=10, progress=False)
    first = {p.name: pd.read_parquet(p) for p in sorted((out / "parts").iterdir())}
    # lose two parts (an interrupted run), rebuild: only those are written, with identical content
    victims = sorted(first)[1:3]
    for name in victims:
        (out / "parts" / name).unlink()
    rep = build_corpus(cohort_dir, out, part_size=10, progress=False)
    assert rep["parts_written"] == 2
    for name in victims:
        pd.testing.assert_frame_equal(pd.read_parquet(out / "parts" / name), first[name])
    with pytest.raises(FmrilmError, match="part_size=10, this build has 5"):
        build_corpus(cohort_dir, out, part_size=5, progress=False)
    meta = json.loads((out / "corpus.json").read_text())
    meta["descriptor_version"] = "0"
    (out / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(FmrilmError, match="descriptor version 0.*refusing to mix"):
        build_corpus(cohort_dir, out, part_size=10, progress=False)


def test_sharded_build_equals_single_build(cohort_dir, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    build_corpus(cohort_dir, single, part_size=8, progress=False)
    with pytest.raises(FmrilmError, match="corpus norms"):
        build_corpus(cohort_dir, sharded, part_size=8, shard=(0, 2), progress=False)
    assert main(["corpus", "norms", str(cohort_dir), "--out", str(sharded)]) == 0
    for i in range(2):
        build_corpus(cohort_dir, sharded, part_size=8, shard=(i, 2), progress=False)
    a, b = Corpus(single).table, Corpus(sharded).table
    pd.testing.assert_frame_equal(a, b)


def test_cli_show_and_errors(cohort_dir, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["corpus", "build", str(cohort_dir), "--out", str(out), "--jobs", "2"]) == 0
    sid = Cohort(cohort_dir).manifest.query("paradigm == 'task'")["scan_id"].iloc[0]
    capsys.readouterr()
    assert main(["corpus", "show", str(out), sid]) == 0
    shown = capsys.readouterr().out
    assert f"scan {sid}" in shown and "[connectivity]" in shown and "text 1:" in shown
    assert main(["corpus", "show", str(out), sid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scan_id"] == sid
    assert main(["corpus", "show", str(out), "sub-nope_task-rest"]) == 2
    assert "no scan 'sub-nope_task-rest'" in capsys.readouterr().err
    assert main(["corpus", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "c2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_paraphrase_hook_keeps_only_checked_rewrites(cohort_dir, tmp_path):
    """A fake paraphraser: faithful rewrites for some sentences, a flipped fact for others."""

    def fake(sentences):
        out = []
        for i, s in enumerate(sentences):
            if i % 2:
                out.append(s.replace("reduced", "increased").replace("typical", "markedly reduced"))
            else:
                out.append("In other words: " + s[0].lower() + s[1:])
        return out

    out = tmp_path / "corpus"
    build_corpus(cohort_dir, out, part_size=40, paraphrase=fake, progress=False)
    table = Corpus(out).table
    stats = [json.loads(s) for s in table["paraphrase_stats"]]
    assert all(s["accepted"] >= 1 for s in stats)
    for s, para, texts in zip(stats, table["paraphrases"], table["texts"], strict=True):
        assert len(para) == 1 and para[0] != texts[0]
        for r in s["replaced"]:
            assert r["index"] % 2 == 0 and r["paraphrase"].startswith("In other words")
    with pytest.raises(FmrilmError, match="paraphrase"):
        build_corpus(cohort_dir, out, part_size=40, progress=False)  # built with, now without


def test_corrupt_corpus_json_is_a_one_line_error(cohort_dir, tmp_path, capsys):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "corpus.json").write_text("{not json")
    assert main(["corpus", "build", str(cohort_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corpus.json: corrupt JSON" in err and err.count("\n") == 0
