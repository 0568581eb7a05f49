"""Stage 3 on the tiny backbone: instruction tuning from a stage-2 model, then evaluation."""

import numpy as np
import pytest
import torch

from fmrilm.config import InstructConfig, PretrainConfig, TokenizerConfig
from fmrilm.corpus.build import build_corpus
from fmrilm.data.cohort import Cohort
from fmrilm.data.simulate import SimulationConfig, simulate_cohort
from fmrilm.data.splits import assign_splits
from fmrilm.errors import FmrilmError
from fmrilm.llm.backbones import get_backbone
from fmrilm.model.fusion import FMRILM
from fmrilm.recipes.instruct import run_instruct
from fmrilm.recipes.pretrain import run_pretrain
from fmrilm.tokenizer import FMRITokenizer
from fmrilm.tokenizer.codes import scan_span

QUIET = dict(progress=False, log=lambda line: None)


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """12 subjects (rest + 2 tasks): 6 train / 3 val / 3 test, a corpus, an untrained tiny
    tokenizer aligned to the tiny LLM, and a 2-step stage-2 model."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage3")
    data = root / "sim"
    simulate_cohort(data, SimulationConfig(n_subjects=12, seed=5, n_tasks=2), progress=False)
    c = Cohort(data)
    c.set_splits(assign_splits(c.manifest, seed=0, fractions=(0.5, 0.25, 0.25)))
    build_corpus(data, root / "corpus", progress=False)
    backbone, _, _ = get_backbone("tiny")
    torch.manual_seed(0)
    # untrained, with a text head for MiniLM's 384-d space (retrieval runs, at chance)
    FMRITokenizer(
        TokenizerConfig.tiny(), text_dim=384, llm_dim=backbone.config.hidden_size
    ).save_pretrained(root / "tokenizer")
    cfg = PretrainConfig(llm="tiny", steps=2, batch_size=2, span_patches=2, warmup=1,
                         log_every=1, ckpt_every=2, bf16="off")  # fmt: skip
    run_pretrain(root / "tokenizer", data, root / "stage2", cfg, root / "corpus", **QUIET)
    yield root
    torch.set_num_threads(n)


def _icfg(**kw):
    base = dict(steps=4, batch_size=3, span_patches=2, warmup=1, log_every=2, ckpt_every=2,
                bf16="off", fewshot_prob=0.5, multi_question=0.5, context_prob=0.5)  # fmt: skip
    return InstructConfig(**{**base, **kw})


def test_instruction_tuning_trains_and_records_its_tasks(stage2):
    root = stage2
    summary = run_instruct(
        root / "stage2", root / "sim", root / "instruct", _icfg(held_out_tasks=["sex"]),
        root / "corpus", **QUIET,
    )  # fmt: skip
    last = summary["history"][-1]
    assert np.isfinite(last["instruct_loss"]) and "replay_loss" in last
    model = FMRILM.from_pretrained(root / "instruct")
    info = model.info["instruct"]
    trained = {t["name"] for t in info["tasks"]}
    assert "sex" not in trained and {"age", "task_state", "description"} <= trained
    assert info["held_out_tasks"] == ["sex"]
    # the adapters moved away from the stage-2 model
    before = FMRILM.from_pretrained(root / "stage2")
    a = dict(before.named_parameters())
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, a[n])]
    assert any("lora_B" in n for n in moved)
    with pytest.raises(FmrilmError, match="already holds a model"):
        run_instruct(root / "stage2", root / "sim", root / "instruct", _icfg(), **QUIET)


def test_bad_settings_are_refused(stage2):
    root = stage2
    with pytest.raises(FmrilmError, match="both trained"):
        _icfg(tasks=["sex"], held_out_tasks=["sex"]).validate()
    with pytest.raises(FmrilmError, match="held_out_tasks: .*shoe_size"):
        run_instruct(
            root / "stage2", root / "sim", root / "x", _icfg(held_out_tasks=["shoe_size"]),
            root / "corpus", **QUIET,
        )  # fmt: skip


def test_lora_adaptation_uses_k_subjects_per_class_and_is_undone(stage2):
    from fmrilm.evaluation.adapt import adapt_to_shots
    from fmrilm.evaluation.adapt import restore_weights as _restore
    from fmrilm.evaluation.adapt import snapshot_weights as _snapshot
    from fmrilm.tasks import resolve_tasks
    from fmrilm.tokenizer.codes import encode_split

    root = stage2
    model = FMRILM.from_pretrained(root / "stage2")
    cohort = Cohort(root / "sim")
    task = resolve_tasks(cohort, ["sex"])[0]
    codes = encode_split(model.fmri_tokenizer, cohort, "train")
    before = _snapshot(model)
    out = adapt_to_shots(model, cohort, task, 1, codes, 2, steps=2)
    train = set(cohort.split("train")["subject"])
    assert len(out["subjects"]) == 2 and set(out["subjects"]) <= train
    changed = [
        n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])
    ]
    assert changed
    _restore(model, before)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_scan_span_is_deterministic_without_rng():
    codes = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    codes[1, :, 3] = -1
    assert np.array_equal(scan_span(codes, 2), codes[0][:, :2])
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = scan_span(codes, 3, rng)
        assert s.shape == (3, 3) and (s >= 0).all()


def test_scan_steps_are_the_whole_scan_in_time_order():
    from fmrilm.recipes.evaluate import _scan_steps_arg
    from fmrilm.tokenizer.codes import scan_steps

    codes = np.arange(3 * 2 * 4).reshape(3, 2, 4)  # 3 windows, 2 ROIs, 4 steps
    codes[2, :, 2:] = -1  # the last window holds 2 complete steps
    whole = scan_steps(codes)
    assert whole.shape == (2, 10) and (whole >= 0).all()
    np.testing.assert_array_equal(whole[:, 4:8], codes[1])
    np.testing.assert_array_equal(scan_steps(codes, 5), whole[:, :5])
    assert _scan_steps_arg("all") is None and _scan_steps_arg("12") == 12
    for bad in ("0", "-3", "many"):
        with pytest.raises(FmrilmError, match="--scan-steps must be"):
            _scan_steps_arg(bad)


def test_eval_scores_the_model_next_to_baselines_and_writes_a_report(stage2):
    from fmrilm.recipes.evaluate import run_eval

    root = stage2
    model_dir = root / "instruct"
    if not (model_dir / "config.json").exists():  # run alone: tune first
        run_instruct(root / "stage2", root / "sim", model_dir, _icfg(held_out_tasks=["sex"]),
                     root / "corpus", **QUIET)  # fmt: skip
    metrics = run_eval(
        model_dir, root / "sim", tasks=["sex", "task_state", "age"],
        modes=["zero-shot", "few-shot", "lora", "probe"], shots=[1], corpus=root / "corpus", adapt_steps=2,
        multi_question=True,
        report=root / "report", n_boot=50, **QUIET,
    )  # fmt: skip
    sex = metrics["tasks"]["sex"]
    assert sex["n_test"] == 3 and set(sex["classes"]) == {"F", "M"}
    m = sex["methods"]
    assert {"fmrilm zero-shot", "fmrilm free text", "fmrilm in-context K=1", "fmrilm LoRA K=1",
            "majority", "FC+LR", "oracle"} <= set(m)  # fmt: skip
    assert (
        "fmrilm tokenizer probe" in m
        and "r2" in metrics["tasks"]["age"]["methods"]["fmrilm tokenizer probe"]["metrics"]
    )
    assert set(sex["fewshot"]) == {"fmrilm in-context", "fmrilm LoRA", "FC few-shot"}
    assert m["fmrilm zero-shot"]["note"].startswith("not instruction-tuned")  # held out
    for name in ("fmrilm zero-shot", "FC+LR"):
        v, lo, hi = m[name]["metrics"]["accuracy"]
        assert 0 <= lo <= v <= hi <= 1
    assert 0 <= m["fmrilm free text"].get("invalid_rate", 0) <= 1
    assert "auroc" in m["fmrilm zero-shot"]["metrics"]  # from the candidate probabilities
    assert metrics["tasks"]["task_state"]["n_test"] > 3  # every held-out scan, not one per subject
    age = metrics["tasks"]["age"]["methods"]
    assert "r2" in age["fmrilm zero-shot"]["metrics"] and "FC+ridge" in age
    assert "fmrilm multi-question" in age and "fmrilm multi-question" in m  # sex + age together
    assert "task_state" not in str(m["fmrilm multi-question"]["note"])  # scan-level: not grouped
    assert any(n.startswith("multi-question: 2 questions") for n in metrics["notes"])
    assert metrics["tasks"]["sex"]["fewshot"]["fmrilm in-context"]["k"] == [1]
    assert metrics["throughput"]["scans_per_s"] > 0
    r = metrics["retrieval"]["fmri_to_text"]
    assert r["n"] >= 2 and 0 <= r["recall_at"]["1"] <= 1
    html = (root / "report" / "report.html").read_text()
    assert "fmrilm zero-shot" in html and "task_state" in html
    assert list((root / "report").glob("*.png"))
    # K larger than a class's training subjects is a clear error
    with pytest.raises(FmrilmError, match="K=50"):
        run_eval(model_dir, root / "sim", tasks=["sex"], modes=["few-shot"], shots=[50],
                 baselines=False, retrieval=False, **QUIET)  # fmt: skip


def test_eval_with_descriptor_lines_and_full_fine_tuning(stage2):
    from fmrilm.evaluation.adapt import adapt_to_shots
    from fmrilm.evaluation.adapt import restore_weights as _restore
    from fmrilm.evaluation.adapt import snapshot_weights as _snapshot
    from fmrilm.evaluation.baselines import fc_fewshot_curve
    from fmrilm.recipes.evaluate import run_eval
    from fmrilm.tasks import resolve_tasks
    from fmrilm.tokenizer.codes import encode_split

    root = stage2
    metrics = run_eval(
        root / "stage2", root / "sim", tasks=["sex", "task_state"],
        modes=["zero-shot", "lora", "full", "state-probe"],
        shots=[1], corpus=root / "corpus", descriptors=True, adapt_steps=2, n_boot=20,
        free_text=False, retrieval=False, **QUIET,
    )  # fmt: skip
    m = metrics["tasks"]["sex"]["methods"]
    assert {"fmrilm zero-shot", "fmrilm zero-shot + descriptors", "fmrilm LoRA K=1 + descriptors",
            "fmrilm full fine-tuning K=1 + descriptors", "descriptors+LR", "FC+LR"} <= set(m)  # fmt: skip
    assert "prompt tokens" in m["fmrilm zero-shot + descriptors"]["note"]
    assert "every weight" in m["fmrilm full fine-tuning K=1 + descriptors"]["note"]
    probe = m["fmrilm LLM-state probe + descriptors"]
    n_train = Cohort(root / "sim").split("train")["subject"].nunique()  # a rest scan each
    assert f"fitted on {n_train} training rows" in probe["note"]
    assert 0 <= probe["metrics"]["balanced_accuracy"][0] <= 1
    assert set(metrics["tasks"]["sex"]["fewshot"]) == {
        "fmrilm LoRA + descriptors", "fmrilm full fine-tuning + descriptors", "FC few-shot",
    }  # fmt: skip
    alone, _ = fc_fewshot_curve(
        Cohort(root / "sim"), resolve_tasks(Cohort(root / "sim"), ["sex"])[0], [1]
    )
    assert alone == metrics["tasks"]["sex"]["fewshot"]["FC few-shot"]  # same rows, same curve
    # task state has several runs per test subject: its intervals resample subjects, so a
    # constant prediction still gets an interval that is a valid range
    v, lo, hi = metrics["tasks"]["task_state"]["methods"]["majority"]["metrics"]["accuracy"]
    assert 0 <= lo <= v <= hi <= 1
    whole = run_eval(
        root / "stage2", root / "sim", tasks=["task_state"], modes=["zero-shot", "state-probe"],
        scan_steps=4, n_boot=20, free_text=False, retrieval=False, baselines=False, **QUIET,
    )  # fmt: skip
    assert any(n.startswith("each scan is shown as up to 4 of its time") for n in whole["notes"])
    assert "fmrilm LLM-state probe" in whole["tasks"]["task_state"]["methods"]
    with pytest.raises(FmrilmError, match="more than the backbone's context of 2048"):
        run_eval(root / "stage2", root / "sim", scan_steps="all", **QUIET)  # the tiny LLM's
    with pytest.raises(FmrilmError, match="cannot be combined with --mode lora"):
        run_eval(root / "stage2", root / "sim", modes=["lora"], scan_steps="all", **QUIET)
    with pytest.raises(FmrilmError, match="--descriptors needs --corpus"):
        run_eval(root / "stage2", root / "sim", tasks=["sex"], descriptors=True, **QUIET)
    with pytest.raises(FmrilmError, match="K=50 but task 'sex' has at most"):
        run_eval(root / "stage2", root / "sim", tasks=["sex"], modes=["lora"], shots=[50], **QUIET)
    # full fine-tuning moves backbone weights, then freezes them again; a snapshot undoes it
    model = FMRILM.from_pretrained(root / "stage2")
    cohort = Cohort(root / "sim")
    task = resolve_tasks(cohort, ["sex"])[0]
    codes = encode_split(model.fmri_tokenizer, cohort, "train")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _snapshot(model, everything=True)
    adapt_to_shots(model, cohort, task, 1, codes, 2, steps=2, full=True)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(not flags[n] for n in moved)  # a frozen backbone weight was tuned
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    _restore(model, before)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_cli_instruct_eval_and_ask(stage2, capsys):
    from fmrilm.cli import main

    root = stage2
    out = root / "cli_instruct"
    argv = ["instruct", "--model", str(root / "stage2"), "--data", str(root / "sim"),
            "--corpus", str(root / "corpus"), "--out", str(out), "--tasks", "sex,task_state",
            "--quiet", "steps=2", "batch_size=2", "span_patches=2", "bf16=off", "warmup=1"]  # fmt: skip
    fsdp = [*argv[:-5], "--fsdp", "steps=1", "batch_size=2", "bf16=off"]
    fsdp[fsdp.index("--out") + 1] = str(root / "cli_fsdp")
    assert main(fsdp) == 2 and "start with torchrun" in capsys.readouterr().err
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--data", str(root / "sim"), "--tasks", "sex",
                 "--n-boot", "20", "--quiet", "--no-free-text"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "sex (classification" in text and "FC+LR" in text and "fmrilm zero-shot" in text
    scan = Cohort(root / "sim").split("test")["scan_id"].iloc[0]
    base = ["ask", "--model", str(out), "--data", str(root / "sim"), "--scan", scan]
    assert main([*base, "--task", "sex"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("A: ") and any(line.strip().endswith("female") for line in lines)
    assert main([*base, "What do you see?", "--max-new-tokens", "3"]) == 0
    assert main([*base, "--task", "age"]) == 0  # not tuned on age: zero-shot, and says so
    captured = capsys.readouterr()
    assert "not instruction-tuned" in captured.err and "years" in captured.out
    no_data = ["ask", "--model", str(out), "--scan", scan, "--task", "age"]
    assert main(no_data) == 2 and "give --data" in capsys.readouterr().err
    # the descriptor line from the corpus goes between the scan and the question
    assert main([*base, "--task", "sex", "--corpus", str(root / "corpus")]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("Imaging summary") and captured.out.startswith("Q: ")
    assert main([*no_data, "--corpus", str(root / "corpus")]) == 2
    assert "--corpus needs --data" in capsys.readouterr().err
    assert main(["eval", "--model", str(out), "--data", str(root / "sim"), "--tasks", "sex",
                 "--n-boot", "20", "--quiet", "--no-free-text", "--descriptors"]) == 2  # fmt: skip
    assert "--descriptors needs --corpus" in capsys.readouterr().err
    assert main(["ask", "--model", str(out), "--scan", "nope.npy", "hi"]) == 2
    assert main(["eval", "--model", str(out), "--data", str(root / "sim"), "--mode", "bogus"]) == 2


def test_a_prompt_longer_than_the_context_is_refused_not_truncated(stage2):
    from fmrilm.evaluation.scoring import ContextTooLong, answer_rows
    from fmrilm.tasks import resolve_tasks, task_rows
    from fmrilm.tokenizer.codes import encode_split

    root = stage2
    model = FMRILM.from_pretrained(root / "stage2")
    cohort = Cohort(root / "sim")
    task = resolve_tasks(cohort, ["sex"])[0]
    codes = encode_split(model.fmri_tokenizer, cohort, "test")
    model._base().config.max_position_embeddings = 64
    with pytest.raises(ContextTooLong, match="exceeds the backbone's context of 64"):
        answer_rows(model, task, task_rows(cohort, task, "test"), lambda s: scan_span(codes[s], 2))


def test_retrieve_text_to_scans_and_scan_to_texts(stage2):
    import hashlib

    def fake_encoder(texts):
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:12], 16))
            v = rng.standard_normal(384)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)

    root = stage2
    model = FMRILM.from_pretrained(root / "stage2")
    cohort = Cohort(root / "sim")
    rows = cohort.split("test")
    hits = model.retrieve(text="strong default-mode connectivity", gallery=(cohort, rows), k=3,
                          text_encoder=fake_encoder)  # fmt: skip
    assert len(hits) == 3 and {h[0] for h in hits} <= set(rows["scan_id"])
    assert [h[1] for h in hits] == sorted((h[1] for h in hits), reverse=True)
    sid = rows["scan_id"].iloc[0]
    texts = ["low motion", "high motion", "a task run", "a resting run"]
    found = model.retrieve(scan=cohort.scan(sid), gallery=texts, k=10,
                           atlas=cohort.atlas(cohort.row(sid)["atlas"]), text_encoder=fake_encoder)  # fmt: skip
    assert sorted(t for t, _ in found) == sorted(texts)  # k larger than the gallery: all of it
    with pytest.raises(FmrilmError, match="exactly one"):
        model.retrieve(gallery=texts)
