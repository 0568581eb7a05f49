"""Stage 3 evaluation (``fmrilm eval``): questions about held-out scans, next to baselines.

For each task (:mod:`fmrilm.tasks.registry`) on its held-out rows (:func:`task_rows`, one scan
per subject for subject-level tasks; the split is subject-disjoint):

* ``zero-shot``: the question alone. Answers are scored two ways:

  - **constrained**: the log-likelihood of every valid candidate answer
    (:func:`fmrilm.model.qa.candidate_logprobs`); the softmax over candidates gives class
    probabilities (AUROC, calibration); a regression answer is the probability-weighted mean of
    the candidate grid;
  - **free text**: greedy generation parsed by the task (:meth:`Task.parse`). An unparseable
    answer is *invalid*: counted wrong for classification, replaced by the training mean for
    regression, and its rate is always reported -- never silently mapped to a class.

* ``few-shot``: K labelled exemplars per class (regression: 2K subjects) from *other training
  subjects* in the prompt, for each K of ``shots`` (constrained scoring);
* ``lora``: for each K of ``shots``, the LoRA adapters (and fMRI tables) are tuned on K
  labelled training subjects per class of the task alone (``adapt_steps`` steps through the
  stage-3 training loop), the question is answered zero-shot, and the weights are restored;
* ``probe``: a linear probe on the fMRI tokenizer's scan embeddings (nested CV, training split);
* baselines in the same run and on the same held-out subjects: majority class / training
  mean, FC (upper triangle) + logistic/ridge regression fitted on the training split, their
  few-shot curve at the same K, and on simulated cohorts the simulator's oracle;
* retrieval: fMRI -> text and text -> fMRI among held-out scans with corpus texts.

A task the model was not instruction-tuned on (not in its ``instruct.tasks``) is answered by
the same path, and the report says it is zero-shot for that model. Results follow the schema of
:mod:`fmrilm.evaluation.report`; ``report=DIR`` writes report.html, metrics.json and plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError

MODES = ("zero-shot", "few-shot", "lora", "full", "probe", "state-probe")
FULL_LR = 1e-4  # full fine-tuning: every backbone weight moves, so a 10x smaller step than LoRA
STATE_PROBE_TRAIN = 4  # with --max-scans N the state probe fits on at most 4N training rows


class ContextTooLong(FmrilmError):
    """An in-context prompt longer than the backbone can read."""


def answer_rows(
    model,
    task,
    rows: pd.DataFrame,
    span_of: Callable[[str], np.ndarray],
    *,
    cohort=None,
    shots: int = 0,
    free_text: bool = True,
    bf16: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    corpus=None,
) -> dict[str, Any]:
    """The model's answers to ``task`` about every row: constrained and (optionally) free.

    With ``corpus`` (a CorpusView) every scan in the prompt carries its descriptor line.
    """
    from fmrilm.model.qa import answer_free, candidate_logprobs, render, softmax
    from fmrilm.tasks import fewshot_exemplars, make_example

    tok = model.text_tokenizer
    cands = list(task.candidate_texts())
    rng = np.random.default_rng(seed)
    context = getattr(model._base().config, "max_position_embeddings", None)
    y_true, y_pred, proba, prompts = [], [], [], []
    t0 = time.perf_counter()
    for _, row in rows.iterrows():
        exemplars = None
        if shots:
            exemplars = fewshot_exemplars(cohort, task, shots, rng, exclude_subject=row["subject"])
        ex = make_example(
            task, row, rng, shots=exemplars, corpus=corpus, describe=corpus is not None
        )
        prompt = render(model, tok, ex.segments, span_of).ids
        if context and len(prompt) + 16 > context:
            raise ContextTooLong(
                f"{task.name}: a prompt of {len(prompt)} tokens (K={shots}) exceeds the "
                f"backbone's context of {context}"
            )
        p = softmax(candidate_logprobs(model, tok, prompt, cands, bf16=bf16))
        y_true.append(ex.labels[0])
        if task.kind == "classification":
            y_pred.append(task.values[int(np.argmax(p))])
        else:
            y_pred.append(float(p @ np.asarray(task.grid, dtype=float)))
        proba.append(p)
        prompts.append(prompt)
    seconds = time.perf_counter() - t0
    out = {
        "y_true": y_true,
        "y_pred": y_pred,
        "proba": np.array(proba),
        "seconds": seconds,
        "prompt_tokens": int(np.mean([len(p) for p in prompts])),
    }
    if free_text:
        texts = []
        for b in range(0, len(prompts), batch_size):
            texts += answer_free(model, tok, prompts[b : b + batch_size], bf16=bf16)
        out["free_text"] = texts
        out["free_pred"] = [task.parse(t) for t in texts]
    return out


def answer_multi(
    model,
    tasks: list,
    rows: pd.DataFrame,
    span_of,
    *,
    bf16: bool = False,
    seed: int = 0,
    corpus=None,
) -> dict[str, Any]:
    """All ``tasks`` asked in one prompt per row ("1. ... 2. ..."), answered in order.

    Question i is scored over its candidates after the model's own answers to questions
    1..i-1 (as it would have written them), followed by a newline (the end of turn for the
    last one) -- the reply format the model was tuned on (:func:`format_answers`).
    """
    from fmrilm.model.objectives import text_ids
    from fmrilm.model.qa import candidate_logprobs, render, softmax
    from fmrilm.tasks import make_example

    tok = model.text_tokenizer
    rng = np.random.default_rng(seed)
    newline = text_ids(tok, "\n")
    out = {t.name: {"y_true": [], "y_pred": [], "proba": []} for t in tasks}
    t0 = time.perf_counter()
    for _, row in rows.iterrows():
        ex = make_example(tasks, row, rng, corpus=corpus, describe=corpus is not None)
        prompt = render(model, tok, ex.segments, span_of).ids
        written = ""
        for i, name in enumerate(ex.tasks):
            task = next(t for t in tasks if t.name == name)
            prefix = prompt + text_ids(tok, f"{written}{i + 1}. ")
            last = i == len(ex.tasks) - 1
            p = softmax(
                candidate_logprobs(
                    model, tok, prefix, list(task.candidate_texts()), bf16=bf16,
                    end=None if last else newline,
                )
            )  # fmt: skip
            k = int(np.argmax(p))
            if task.kind == "classification":
                pred = task.values[k]
            else:
                pred = float(p @ np.asarray(task.grid, dtype=float))
            written += f"{i + 1}. {task.candidate_texts()[k]}\n"
            out[name]["y_true"].append(ex.labels[i])
            out[name]["y_pred"].append(pred)
            out[name]["proba"].append(p)
    out["seconds"] = time.perf_counter() - t0
    return out


def adapt_to_shots(
    model,
    cohort,
    task,
    k: int,
    codes: dict[str, np.ndarray],
    span_patches: int,
    *,
    steps: int = 30,
    seed: int = 0,
    bf16: bool = False,
    corpus=None,
    full: bool = False,
) -> dict[str, Any]:
    """Tune ``model``'s trainable weights in place on K training subjects per class of ``task``.

    With ``corpus`` (a CorpusView) the prompts carry the descriptor line, as at evaluation.
    ``full`` tunes every weight of the backbone too (full fine-tuning, learning rate
    ``FULL_LR``) instead of the LoRA adapters and fMRI tables alone; the frozen weights are
    frozen again afterwards.

    The caller restores the weights afterwards (:func:`_snapshot` / :func:`_restore`).
    Returns the subjects used and the training history.
    """
    import tempfile

    from fmrilm.config import InstructConfig
    from fmrilm.tasks import fewshot_exemplars, make_example
    from fmrilm.training import instruct_sampler, train_joint

    rng = np.random.default_rng([seed, k])
    rows = fewshot_exemplars(cohort, task, k, rng, exclude_subject=None)
    examples = [
        make_example(task, row, rng, corpus=corpus, describe=corpus is not None)
        for _ in range(3)
        for _, row in rows.iterrows()
    ]
    config = InstructConfig(
        tasks=[task.name], steps=steps, batch_size=min(4, len(examples)), warmup=2,
        span_patches=span_patches, replay_weight=0.0, fewshot_prob=0.0, multi_question=0.0,
        context_prob=0.0, descriptor_prob=0.0, lr=FULL_LR if full else 1e-3,
        log_every=steps, ckpt_every=steps, bf16="on" if bf16 else "off", seed=seed,
    )  # fmt: skip
    sampler = instruct_sampler(
        config, model, model.text_tokenizer, cohort, [task], examples, codes, []
    )
    frozen = [p for p in model.parameters() if not p.requires_grad] if full else []
    try:
        for p in frozen:
            p.requires_grad_(True)
        with tempfile.TemporaryDirectory() as tmp:
            summary = train_joint(
                model, model.text_tokenizer, [], [], config, tmp, sampler=sampler,
                log=lambda s: None,
            )  # fmt: skip
    finally:
        for p in frozen:
            p.requires_grad_(False)
    model.eval()
    return {"subjects": sorted(rows["subject"].tolist()), "history": summary["history"]}


def _curve(task, shots: list[int], scores: list[dict]) -> dict[str, Any]:
    """A few-shot curve of the report schema: the primary metric [value, lo, hi] per K."""
    metric = "balanced_accuracy" if task.kind == "classification" else "r2"
    return {
        "k": list(shots),
        "metric": metric,
        "value": [v[metric][0] for v in scores],
        "lo": [v[metric][1] for v in scores],
        "hi": [v[metric][2] for v in scores],
    }


def _snapshot(model, everything: bool = False) -> dict[str, Any]:
    """Copies of the trainable weights (``everything``: of all weights)."""
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if everything or p.requires_grad
    }


def _restore(model, snapshot: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in snapshot:
                p.copy_(snapshot[n])


def _groups(rows: pd.DataFrame) -> np.ndarray | None:
    """The subject of each row when a subject has several (cluster bootstrap, grouped inner CV),
    else None."""
    from fmrilm.evaluation.baselines import repeated_subjects

    return repeated_subjects(rows["subject"].to_numpy())


def _score(
    task, y_true, y_pred, proba=None, *, n_boot: int, fill=None, groups=None
) -> dict[str, Any]:
    """Metrics of one method; regression predictions that are None take ``fill``; ``groups``
    (:func:`_groups`) makes the bootstrap resample subjects."""
    from fmrilm.evaluation.metrics import invalid_rate, score_classifier, score_regression

    if task.kind == "classification":
        # a class seen only in the held-out split is no candidate: it stays, always wrong
        classes = list(task.values)
        classes += sorted({v for v in y_true if v not in classes}, key=str)
        if proba is not None and len(classes) > len(task.values):
            proba = np.hstack([proba, np.zeros((len(proba), len(classes) - len(task.values)))])
        return score_classifier(
            y_true, y_pred, proba, classes=classes, n_boot=n_boot, groups=groups
        )
    bad = invalid_rate(y_pred)
    pred = np.array([fill if p is None else p for p in y_pred], dtype=float)
    res = score_regression(np.asarray(y_true, dtype=float), pred, n_boot=n_boot, groups=groups)
    if bad:
        res["invalid_rate"] = bad
    return res


def eval_rows(cohort, task, split: str, max_rows: int | None = None) -> pd.DataFrame:
    """The labelled rows of ``split`` that ``run_eval`` asks about (``max_rows`` evenly spaced)."""
    rows = _label_rows(cohort, task, split)
    if max_rows is not None and len(rows) > max_rows:
        keep = np.linspace(0, len(rows) - 1, max_rows).round().astype(int)
        rows = rows.iloc[np.unique(keep)]
    return rows


def fc_fewshot_curve(
    cohort, task, shots: Sequence[int], *, split: str = "test", max_rows: int | None = None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The FC few-shot baseline curve alone (as in ``run_eval``'s baselines), and its notes."""
    from fmrilm.evaluation.baselines import fc_features

    test_rows = eval_rows(cohort, task, split, max_rows)
    both = pd.concat([_label_rows(cohort, task, "train"), test_rows])
    return _fc_curve(cohort, task, both, fc_features(cohort, both), test_rows, shots)


def _label_rows(cohort, task, split: str) -> pd.DataFrame:
    from fmrilm.tasks import task_rows

    rows = task_rows(cohort, task, split).copy()
    rows["_label"] = [task.label(r) for _, r in rows.iterrows()]
    return rows[rows["_label"].notna()]


def _baselines(
    cohort, task, train_rows, test_rows, *, n_boot: int, shots: Sequence[int], corpus=None
):
    """Majority, FC + linear model, (few-shot) FC curve and, with ``corpus`` (a CorpusView), a
    linear model on the descriptor values of the descriptor line -- all on the same rows."""
    from fmrilm.evaluation.baselines import fc_features
    from fmrilm.evaluation.metrics import score_classifier, score_regression

    methods, notes, curves = {}, [], {}
    y_train = train_rows["_label"].to_numpy()
    y_test = test_rows["_label"].tolist()
    groups = _groups(test_rows)
    if task.kind == "classification":
        values, counts = np.unique(
            np.asarray(y_train, dtype=object).astype(str), return_counts=True
        )
        top = values[np.argmax(counts)]
        guess = next(v for v in task.values if str(v) == top)
        res = score_classifier(
            y_test, [guess] * len(y_test), classes=list(task.values), n_boot=n_boot,
            groups=groups,
        )  # fmt: skip
    else:
        guess = float(np.mean(y_train.astype(float)))
        res = score_regression(
            np.asarray(y_test, float), np.full(len(y_test), guess), n_boot=n_boot, groups=groups
        )
    methods["majority" if task.kind == "classification" else "training mean"] = (res, "baseline")
    both = pd.concat([train_rows, test_rows])
    X = fc_features(cohort, both)
    fc = _fit_probe(X, task, train_rows, test_rows, n_boot)
    methods["FC+LR" if task.kind == "classification" else "FC+ridge"] = (fc, "baseline")
    if corpus is not None:
        D = descriptor_features(corpus, both)
        if D.shape[1]:
            res = _fit_probe(D, task, train_rows, test_rows, n_boot)
            name = "descriptors+LR" if task.kind == "classification" else "descriptors+ridge"
            methods[name] = (res, "baseline")
    if shots and task.kind in ("classification", "regression"):
        curve, curve_notes = _fc_curve(cohort, task, both, X, test_rows, shots)
        curves.update({"FC few-shot": curve} if curve else {})
        notes += curve_notes
    return methods, curves, notes


def _fc_curve(cohort, task, both, X, test_rows, shots) -> tuple[dict | None, list[str]]:
    """The FC few-shot curve on ``both`` (training then test rows, FC features ``X``)."""
    from fmrilm.evaluation.baselines import fewshot_curve

    y = both["_label"].to_numpy()
    y = y.astype(float) if task.kind == "regression" else y
    try:
        curve = fewshot_curve(
            cohort, task.name, ks=tuple(shots), rows=both.assign(**{task.name: y}), features=X,
            n_boot=200, train_splits=("train",), test_split=str(test_rows["split"].iloc[0]),
        )  # fmt: skip
    except FmrilmError as exc:
        return None, [f"{task.name}: FC few-shot curve skipped ({exc})"]
    notes = [f"{task.name}: FC few-shot: {curve['note']}"] if curve.get("note") else []
    return {k: curve[k] for k in ("k", "metric", "value", "lo", "hi") if k in curve}, notes


def _oracle(cohort, task, test_rows, *, n_boot: int):
    """The simulator's best achievable prediction on the same rows, when it exists."""
    from fmrilm.evaluation.metrics import score_classifier
    from fmrilm.evaluation.oracle import ORACLE_COLUMNS, oracle_scores, task_oracle

    if not (cohort.root / "simulation").exists() or task.label_from != "column":
        return None
    if task.column in ORACLE_COLUMNS:
        return oracle_scores(cohort, task.column, test_rows["subject"].tolist(), n_boot=n_boot)
    if task.column == "task":
        pred = task_oracle(cohort, test_rows)
        known = {str(v) for v in task.values}
        pred = [p if p in known else None for p in pred]
        return score_classifier(
            test_rows["_label"].tolist(), pred, classes=list(task.values), n_boot=n_boot,
            groups=_groups(test_rows),
        )  # fmt: skip
    return None


def retrieval_both_ways(fmri_tok, cohort, rows: pd.DataFrame, corpus) -> dict[str, Any]:
    """fMRI -> text and text -> fMRI ranks among ``rows`` (scans with corpus texts)."""
    from fmrilm.evaluation.tokenizer import retrieval_similarities

    vecs = scan_embeddings(fmri_tok, cohort, rows)
    sims, _ = retrieval_similarities(vecs, rows["scan_id"].tolist(), corpus, fmri_tok)
    from fmrilm.evaluation.tokenizer import retrieval_ranks

    out = {}
    for name, s in (("fmri_to_text", sims), ("text_to_fmri", sims.T)):
        ranks = retrieval_ranks(s)
        n = len(ranks)
        ks = [k for k in (1, 2, 5, 10, 20, 50) if k <= n]
        out[name] = {
            "recall_at": {str(k): round(float((ranks <= k).mean()), 4) for k in (1, 5, 10)},
            "median_rank": float(np.median(ranks)),
            "n": n,
            "chance_recall_at": {str(k): round(min(k, n) / n, 4) for k in (1, 5, 10)},
            "curve": {"k": ks, "recall": [round(float((ranks <= k).mean()), 4) for k in ks]},
        }
    return out


def run_eval(
    model_dir: str | Path,
    data: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    modes: Sequence[str] = ("zero-shot",),
    shots: Sequence[int] = (2,),
    corpus: str | Path | None = None,
    report: str | Path | None = None,
    split: str = "test",
    n_boot: int = 1000,
    max_rows: int | None = None,
    adapt_steps: int = 30,
    free_text: bool = True,
    multi_question: bool = False,
    baselines: bool = True,
    retrieval: bool = True,
    descriptors: bool = False,
    scan_steps: int | str | None = None,
    bf16: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate a stage-2/3 model on ``split``; returns the report-schema metrics dict.

    ``scan_steps`` sets how much of each scan a prompt shows: None (default) the span the model
    was tuned on (its first window's first ``span_patches`` steps), N the scan's first N time
    steps across windows, ``"all"`` the whole scan (:func:`scan_steps`). A span that does not
    fit the backbone's context is an error before any answer.

    ``descriptors`` (needs ``corpus``) adds each scan's descriptor line to the prompts: zero-shot
    is then scored both ways (fMRI tokens alone, and "+ descriptors"), the other fmrilm modes
    with the line. With a corpus, the baselines include a linear model on the same descriptor
    values the line puts into words.
    """
    from tqdm.auto import tqdm

    from fmrilm.checkpoint import versions
    from fmrilm.corpus.build import Corpus
    from fmrilm.data.cohort import Cohort
    from fmrilm.evaluation.report import method_entry, write_report
    from fmrilm.model.fusion import FMRILM
    from fmrilm.runtime import use_bf16
    from fmrilm.tasks import as_corpus_view, max_shots, resolve_tasks
    from fmrilm.tokenizer.codes import encode_split, scan_span
    from fmrilm.tokenizer.codes import scan_steps as all_steps

    bad = sorted(set(modes) - set(MODES))
    if bad or not modes:
        raise FmrilmError(f"--mode must be among {', '.join(MODES)}, got {bad or 'nothing'}")
    shots = sorted({int(k) for k in shots})
    if ({"few-shot", "lora", "full"} & set(modes)) and (not shots or min(shots) < 1):
        raise FmrilmError(f"--shots must be positive integers, got {shots}")
    if max_rows is not None and max_rows < 2:
        raise FmrilmError(f"--max-scans must be at least 2, got {max_rows}")
    steps_cap = _scan_steps_arg(scan_steps)
    if scan_steps is not None and {"lora", "full"} & set(modes):
        raise FmrilmError(
            "--scan-steps cannot be combined with --mode lora/full: adaptation trains on the "
            "span the model was tuned on"
        )
    model = FMRILM.from_pretrained(model_dir)
    if model.projector is not None:
        raise FmrilmError(f"{model_dir}: evaluation needs a model with discrete fMRI input")
    bf16 = use_bf16(model.pretrain_config.bf16) if bf16 is None else bf16
    cohort = Cohort(data)
    if not (cohort.manifest["split"] == split).any():
        raise FmrilmError(f"{cohort.root}: the {split!r} split is empty")
    corpus_obj = Corpus(corpus) if corpus is not None else None
    if descriptors and corpus_obj is None:
        raise FmrilmError("--descriptors needs --corpus (the scans' descriptor records)")
    view = as_corpus_view(corpus_obj) if corpus_obj is not None else None
    described = view if descriptors else None  # the corpus the fmrilm prompts read lines from
    sfx = " + descriptors" if descriptors else ""
    task_objs = [t for t in resolve_tasks(cohort, list(tasks) if tasks else None, corpus_obj)]
    text_tasks = [t.name for t in task_objs if t.kind == "text"]
    task_objs = [t for t in task_objs if t.kind != "text"]
    notes = []
    if text_tasks:
        notes.append(
            f"{', '.join(text_tasks)}: free-text tasks are not scored here (descriptions are "
            "checked fact by fact in benchmarks/pretrain_quality.py)"
        )
    if not task_objs:
        raise FmrilmError("no classification or regression task to evaluate")
    instruct = model.info.get("instruct") or {}
    tuned = {t["name"] for t in instruct.get("tasks", [])}
    span_patches = int(instruct.get("config", {}).get("span_patches", 0)) or (
        model.pretrain_config.span_patches
    )
    if {"few-shot", "lora", "full"} & set(modes):  # K too large: an error before any work
        for task in task_objs:
            most = max_shots(cohort, task)
            if task.label_from != "corpus_fact" and max(shots) > most:
                raise FmrilmError(
                    f"--shots K={max(shots)} but task {task.name!r} has at most {most} training "
                    "subjects per class (regression: half its training subjects)"
                )
    log(f"encoding the scans of {cohort.root} ...")
    codes = encode_split(model.fmri_tokenizer, cohort, None, progress=progress)

    def span_of(scan_id: str) -> np.ndarray:
        if scan_steps is None:
            return scan_span(codes[scan_id], span_patches)
        return all_steps(codes[scan_id], steps_cap)

    if scan_steps is not None:
        context = getattr(model._base().config, "max_position_embeddings", None)
        longest = max(codes, key=lambda s: span_of(s).shape[1])
        n_tokens = len(model.vocab.span(span_of(longest)))
        if context and n_tokens + 256 > context:
            raise FmrilmError(
                f"--scan-steps {scan_steps}: scan {longest} becomes {n_tokens} fMRI tokens, "
                f"more than the backbone's context of {context} leaves for a question; "
                "pass a smaller number of steps"
            )
        notes.append(
            f"each scan is shown as {'all' if steps_cap is None else f'up to {steps_cap}'} "
            f"of its time steps (longest: {span_of(longest).shape[1]} steps, {n_tokens} tokens)"
        )

    result_tasks: dict[str, Any] = {}
    embeddings: dict[str, np.ndarray] = {}  # tokenizer scan vectors, shared by probe tasks
    answered, answer_seconds = 0, 0.0
    for task in tqdm(task_objs, desc="tasks", disable=not progress):
        test_rows = eval_rows(cohort, task, split, max_rows)
        train_rows = _label_rows(cohort, task, "train")
        groups = _groups(test_rows)
        methods: dict[str, Any] = {}
        curves: dict[str, Any] = {}
        zs_note = None
        if instruct and task.name not in tuned:
            zs_note = "not instruction-tuned on this task: a zero-shot answer"
        fill = (
            float(np.mean(train_rows["_label"].astype(float)))
            if task.kind == "regression"
            else None
        )
        if "zero-shot" in modes:
            for name, corp in [("fmrilm zero-shot", None)] + (
                [(f"fmrilm zero-shot{sfx}", described)] if descriptors else []
            ):
                ans = answer_rows(
                    model, task, test_rows, span_of, free_text=free_text, bf16=bf16, corpus=corp
                )
                answered += len(test_rows)
                answer_seconds += ans["seconds"]
                res = _score(
                    task, ans["y_true"], ans["y_pred"], ans["proba"], n_boot=n_boot, groups=groups
                )
                note = (
                    zs_note
                    if corp is None
                    else "; ".join(
                        x
                        for x in (zs_note, f"{ans['prompt_tokens']} prompt tokens on average")
                        if x
                    )
                )
                methods[name] = method_entry(res, "fmrilm", note=note)
                if free_text:
                    res = _score(
                        task,
                        ans["y_true"],
                        ans["free_pred"],
                        n_boot=n_boot,
                        fill=fill,
                        groups=groups,
                    )
                    note = "greedy generation parsed by the task; invalid answers counted wrong"
                    if task.kind == "regression":
                        note = "greedy generation parsed as a number; invalid answers take the training mean"
                    free = "fmrilm free text" + (sfx if corp is not None else "")
                    methods[free] = method_entry(res, "fmrilm", note=note)
        fewshot_form = task.label_from != "corpus_fact"
        if not fewshot_form and {"few-shot", "lora", "full"} & set(modes):
            notes.append(f"{task.name}: no few-shot form (the question differs per scan)")
        if "few-shot" in modes and fewshot_form:
            values, fitted = [], []
            for k in shots:
                try:
                    ans = answer_rows(
                        model, task, test_rows, span_of, cohort=cohort, shots=k,
                        free_text=False, bf16=bf16, seed=k, corpus=described,
                    )  # fmt: skip
                except ContextTooLong as exc:
                    notes.append(f"in-context K>={k} skipped: {exc}")
                    break
                fitted.append(k)
                res = _score(
                    task, ans["y_true"], ans["y_pred"], ans["proba"], n_boot=n_boot, groups=groups
                )
                methods[f"fmrilm in-context K={k}{sfx}"] = method_entry(
                    res, "fmrilm", note=f"{ans['prompt_tokens']} prompt tokens on average"
                )
                values.append(res)
            if values:
                curves[f"fmrilm in-context{sfx}"] = _curve(task, fitted, values)
        for mode, label in (("lora", "LoRA"), ("full", "full fine-tuning")):
            if mode not in modes or not fewshot_form:
                continue
            values, fitted = [], []
            snapshot = _snapshot(model, everything=mode == "full")
            try:
                for k in shots:
                    adapted = adapt_to_shots(
                        model, cohort, task, k, codes, span_patches, steps=adapt_steps,
                        bf16=bf16, corpus=described, full=mode == "full",
                    )  # fmt: skip
                    ans = answer_rows(
                        model, task, test_rows, span_of, free_text=False, bf16=bf16, seed=k,
                        corpus=described,
                    )  # fmt: skip
                    res = _score(
                        task,
                        ans["y_true"],
                        ans["y_pred"],
                        ans["proba"],
                        n_boot=n_boot,
                        groups=groups,
                    )
                    what = "every weight" if mode == "full" else "LoRA"
                    methods[f"fmrilm {label} K={k}{sfx}"] = method_entry(
                        res,
                        "fmrilm",
                        note=f"{what} tuned {adapt_steps} steps on {len(adapted['subjects'])} "
                        "training subjects",
                    )
                    values.append(res)
                    fitted.append(k)
                    _restore(model, snapshot)
            finally:
                _restore(model, snapshot)
                del snapshot
            if values:
                curves[f"fmrilm {label}{sfx}"] = _curve(task, fitted, values)
        if "probe" in modes:
            methods["fmrilm tokenizer probe"] = method_entry(
                _embedding_probe(
                    model.fmri_tokenizer, cohort, task, train_rows, test_rows, n_boot, embeddings
                ),
                "fmrilm",
                note="linear model on the tokenizer's scan embeddings (training split)",
            )
        if "state-probe" in modes:
            probe_train = train_rows
            if max_rows is not None and len(train_rows) > STATE_PROBE_TRAIN * max_rows:
                keep = np.linspace(0, len(train_rows) - 1, STATE_PROBE_TRAIN * max_rows)
                probe_train = train_rows.iloc[np.unique(keep.round().astype(int))]
            res = _state_probe(
                model, task, probe_train, test_rows, span_of, n_boot=n_boot, bf16=bf16,
                corpus=described, progress=progress,
            )  # fmt: skip
            methods[f"fmrilm LLM-state probe{sfx}"] = method_entry(
                res,
                "fmrilm",
                note=f"linear model on the backbone's last hidden state at the answer position "
                f"of the zero-shot prompt, fitted on {res['n_train']} training rows",
            )
        if baselines:
            base, base_curves, base_notes = _baselines(
                cohort, task, train_rows, test_rows, n_boot=n_boot,
                shots=shots if {"few-shot", "lora", "full"} & set(modes) else (), corpus=view,
            )  # fmt: skip
            for name, (res, group) in base.items():
                methods[name] = method_entry(res, group)
            curves.update(base_curves)
            notes += base_notes
            oracle = _oracle(cohort, task, test_rows, n_boot=n_boot)
            if oracle is not None:
                methods["oracle"] = method_entry(oracle, "oracle", note="simulator ground truth")
        entry: dict[str, Any] = {"kind": task.kind, "n_test": len(test_rows), "methods": methods}
        if task.kind == "classification":
            entry["classes"] = [str(v) for v in task.values]
        if curves:
            entry["fewshot"] = curves
        result_tasks[task.name] = entry
    if multi_question:
        if answered:
            notes.append(
                f"one question per prompt took {answer_seconds / answered:.2f} s per answer "
                "(constrained scoring)"
            )
        notes += _multi_question(model, cohort, task_objs, split, result_tasks, span_of,
                                 max_rows=max_rows, n_boot=n_boot, bf16=bf16,
                                 corpus=described)  # fmt: skip
    metrics: dict[str, Any] = {
        "title": f"fmrilm evaluation: {Path(model_dir).name} on {cohort.root.name} ({split})",
        "model": str(model_dir),
        "cohort": str(cohort.root),
        "split": split,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "tasks": result_tasks,
        "notes": notes,
    }
    if answered:
        metrics["throughput"] = {
            "scans_per_s": round(answered / max(answer_seconds, 1e-9), 3),
            "how": "zero-shot questions answered per second by constrained scoring (one question "
            "per prompt; free-text generation not included)",
        }
    if retrieval and corpus_obj is None:
        notes.append("retrieval skipped: pass --corpus for the scans' texts")
    elif retrieval and not model.fmri_tokenizer.text_dim:
        notes.append("retrieval skipped: the tokenizer was trained without text alignment")
    elif retrieval:
        rows = cohort.split(split)
        if max_rows is not None and len(rows) > 4 * max_rows:
            rows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, 4 * max_rows).astype(int))]
        try:
            metrics["retrieval"] = retrieval_both_ways(
                model.fmri_tokenizer, cohort, rows, corpus_obj
            )
        except FmrilmError as exc:
            notes.append(f"retrieval skipped: {exc}")
    if report is not None:
        path = write_report(metrics, report)
        log(f"report: {path}")
    return metrics


def _multi_question(
    model, cohort, tasks, split, result_tasks, span_of, *, max_rows, n_boot, bf16, corpus=None
) -> list[str]:
    """Subject-level column tasks asked together: one entry per task, and the time saved."""
    from fmrilm.evaluation.report import method_entry

    group = [t for t in tasks if t.level == "subject" and t.label_from in ("column", "bins")]
    if len(group) < 2:
        return ["multi-question: fewer than 2 subject-level tasks to ask together"]
    rows = None
    for t in group:
        r = _label_rows(cohort, t, split)
        rows = r if rows is None else rows[rows["scan_id"].isin(r["scan_id"])]
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, max_rows).round().astype(int))]
    res = answer_multi(model, group, rows, span_of, bf16=bf16, corpus=corpus)
    for t in group:
        r = res[t.name]
        scores = _score(
            t, r["y_true"], r["y_pred"], np.array(r["proba"]), n_boot=n_boot, groups=_groups(rows)
        )
        name = "fmrilm multi-question" + (" + descriptors" if corpus is not None else "")
        result_tasks[t.name]["methods"][name] = method_entry(
            scores,
            "fmrilm",
            note=f"all of {', '.join(x.name for x in group)} asked in one prompt "
            f"({len(rows)} held-out rows)",
        )
    per = res["seconds"] / max(len(rows), 1)
    return [
        f"multi-question: {len(group)} questions per prompt took {per:.2f} s per scan "
        f"({per / len(group):.2f} s per answer; constrained scoring)"
    ]


def descriptor_features(corpus, rows: pd.DataFrame) -> np.ndarray:
    """(n_rows, n_fields) z-values of the descriptor line's fields (0 where a scan lacks one)."""
    from fmrilm.tasks import summary_fields

    fields = [summary_fields(corpus.record(s)) for s in rows["scan_id"]]
    names = sorted({k for f in fields for k in f})
    return np.array([[f.get(k, 0.0) for k in names] for f in fields], dtype=float).reshape(
        len(rows), len(names)
    )


def scan_embeddings(fmri_tok, cohort, rows: pd.DataFrame, cache: dict | None = None) -> np.ndarray:
    """The tokenizer's text-space vector of every scan in ``rows`` (memoised in ``cache``)."""
    cache = {} if cache is None else cache
    for r in rows.itertuples():
        if r.scan_id not in cache:
            cache[r.scan_id] = fmri_tok.embed(
                cohort.series(r.scan_id), atlas=cohort.atlas(r.atlas), tr=float(r.tr)
            )
    return np.stack([cache[s] for s in rows["scan_id"]])


def _scan_steps_arg(value: int | str | None) -> int | None:
    """``--scan-steps``: None or 'all' -> no cap; a positive integer -> that many steps."""
    if value is None or value == "all":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise FmrilmError(f"--scan-steps must be a positive integer or 'all', got {value!r}")
    return n


def _state_probe(
    model,
    task,
    train_rows,
    test_rows,
    span_of,
    *,
    n_boot: int,
    bf16: bool,
    corpus=None,
    progress: bool = False,
) -> dict[str, Any]:
    """A linear probe (:func:`linear_probe`) on :func:`prompt_state` of every row's zero-shot
    prompt: does the joint model's reading of the scan carry the label, whatever it answers?"""
    from tqdm.auto import tqdm

    from fmrilm.model.qa import prompt_state, render
    from fmrilm.tasks import make_example

    both = pd.concat([train_rows, test_rows])
    states = []
    for i, (_, row) in enumerate(
        tqdm(both.iterrows(), total=len(both), desc=f"{task.name} states", disable=not progress)
    ):
        rng = np.random.default_rng(i)  # the prompt's template, as a zero-shot question draws it
        ex = make_example(task, row, rng, corpus=corpus, describe=corpus is not None)
        prompt = render(model, model.text_tokenizer, ex.segments, span_of).ids
        states.append(prompt_state(model, prompt, bf16=bf16))
    return _fit_probe(np.stack(states), task, train_rows, test_rows, n_boot)


def _embedding_probe(fmri_tok, cohort, task, train_rows, test_rows, n_boot: int, cache=None):
    if not fmri_tok.text_dim:
        raise FmrilmError("--mode probe needs a tokenizer trained with the text alignment")
    X = scan_embeddings(fmri_tok, cohort, pd.concat([train_rows, test_rows]), cache)
    return _fit_probe(X, task, train_rows, test_rows, n_boot)


def _fit_probe(X: np.ndarray, task, train_rows, test_rows, n_boot: int) -> dict[str, Any]:
    """:func:`linear_probe` on features ``X`` of the training rows then the test rows, labels
    from ``_label``; subject-grouped inner CV and bootstrap where a subject has several rows."""
    from fmrilm.evaluation.baselines import linear_probe

    y = pd.concat([train_rows, test_rows])["_label"].to_numpy()
    if task.kind == "regression":
        y = y.astype(float)
    train_mask = np.r_[np.ones(len(train_rows), bool), np.zeros(len(test_rows), bool)]
    return linear_probe(
        X, y, train_mask, ~train_mask, task.kind, n_boot=n_boot, groups=_groups(test_rows),
        train_groups=_groups(train_rows),
    )  # fmt: skip
