"""One evaluation run: every task on its held-out rows, mode by mode, next to the baselines.

:data:`MODE_STEPS` is the table ``{mode: function}`` that :func:`evaluate_task` loops over; each
function adds its methods (and few-shot curves) to the task's :class:`TaskRun`:

* ``zero-shot``: the question alone, scored constrained and (optionally) as parsed free text
  (:mod:`fmrilm.evaluation.scoring`); with descriptor lines, both without and with them;
* ``few-shot``: K labelled exemplars per class from other training subjects in the prompt;
* ``lora`` / ``full``: tuned on K training subjects per class (:mod:`.adapt`), answered
  zero-shot, the weights restored;
* ``probe`` / ``state-probe``: linear probes on the tokenizer's scan vectors or the backbone's
  answer-position state (:mod:`.probes`);

then the baselines and the oracle (:func:`baselines_step`). The recipe
(:func:`fmrilm.recipes.evaluate.run_eval`) resolves the inputs into an :class:`EvalSetup` and
writes the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from fmrilm.errors import FmrilmError
from fmrilm.evaluation.adapt import adapt_to_shots, restore_weights, snapshot_weights
from fmrilm.evaluation.baselines import task_baselines
from fmrilm.evaluation.oracle import oracle_for_rows
from fmrilm.evaluation.probes import embedding_probe, state_probe
from fmrilm.evaluation.report import method_entry
from fmrilm.evaluation.retrieval import retrieval_both_ways
from fmrilm.evaluation.rows import (
    eval_rows,
    evenly_spaced,
    label_rows,
    row_groups,
    score_answers,
    shots_curve,
)
from fmrilm.evaluation.scoring import ContextTooLong, answer_multi, answer_rows
from fmrilm.tokenizer.codes import scan_span, scan_steps

if TYPE_CHECKING:
    import pandas as pd

FEWSHOT_MODES = {"few-shot", "lora", "full"}  # the modes that take --shots
STATE_PROBE_TRAIN = 4  # with --max-scans N the state probe fits on at most 4N training rows


@dataclass
class EvalSetup:
    """What every mode function reads (and the run-wide notes and counters it adds to)."""

    model: Any
    cohort: Any
    split: str
    modes: Sequence[str]
    shots: list[int]
    codes: dict[str, np.ndarray]
    span_of: Callable[[str], np.ndarray]
    span_patches: int
    n_boot: int = 1000
    max_rows: int | None = None
    adapt_steps: int = 30
    free_text: bool = True
    baselines: bool = True
    bf16: bool = False
    progress: bool = True
    described: Any = None  # the corpus view the fmrilm prompts read descriptor lines from
    view: Any = None  # the corpus view of the descriptor baseline (None: no corpus)
    tuned: set[str] | None = None  # tasks the model was instruction-tuned on (None: not tuned)
    notes: list[str] = field(default_factory=list)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # tokenizer scan vectors
    answered: int = 0  # zero-shot questions answered one per prompt, and their seconds
    answer_seconds: float = 0.0

    @property
    def sfx(self) -> str:
        """The suffix of fmrilm method names whose prompts carry descriptor lines."""
        return " + descriptors" if self.described is not None else ""


@dataclass
class TaskRun:
    """One task's rows and the methods and curves the mode functions add."""

    task: Any
    test_rows: pd.DataFrame
    train_rows: pd.DataFrame
    groups: np.ndarray | None
    fill: float | None  # regression: the training mean an invalid free-text answer takes
    zs_note: str | None
    methods: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)

    @property
    def fewshot_form(self) -> bool:
        return self.task.label_from != "corpus_fact"


def span_reader(codes: dict[str, np.ndarray], span_patches: int, steps_cap, whole: bool):
    """The fMRI span a prompt shows of a scan: the tuned span, or (``whole``) its first
    ``steps_cap`` time steps across windows (all of them when None)."""

    def span_of(scan_id: str) -> np.ndarray:
        if not whole:
            return scan_span(codes[scan_id], span_patches)
        return scan_steps(codes[scan_id], steps_cap)

    return span_of


def scan_steps_note(model, codes, span_of, scan_steps_arg, steps_cap) -> str:
    """The note on how much of each scan a prompt shows; an error when the longest scan leaves
    the backbone no room for a question."""
    context = getattr(model._base().config, "max_position_embeddings", None)
    longest = max(codes, key=lambda s: span_of(s).shape[1])
    n_tokens = len(model.vocab.span(span_of(longest)))
    if context and n_tokens + 256 > context:
        raise FmrilmError(
            f"--scan-steps {scan_steps_arg}: scan {longest} becomes {n_tokens} fMRI tokens, "
            f"more than the backbone's context of {context} leaves for a question; "
            "pass a smaller number of steps"
        )
    return (
        f"each scan is shown as {'all' if steps_cap is None else f'up to {steps_cap}'} "
        f"of its time steps (longest: {span_of(longest).shape[1]} steps, {n_tokens} tokens)"
    )


def _score(s: EvalSetup, run: TaskRun, ans: dict, pred: str = "y_pred", fill=None) -> dict:
    proba = ans["proba"] if pred == "y_pred" else None
    return score_answers(
        run.task, ans["y_true"], ans[pred], proba, n_boot=s.n_boot, fill=fill, groups=run.groups
    )


def zero_shot(s: EvalSetup, run: TaskRun) -> None:
    """The question alone (and, with descriptor lines, again with them)."""
    ways = [("fmrilm zero-shot", None)]
    if s.described is not None:
        ways.append((f"fmrilm zero-shot{s.sfx}", s.described))
    for name, corp in ways:
        ans = answer_rows(
            s.model, run.task, run.test_rows, s.span_of, free_text=s.free_text, bf16=s.bf16,
            corpus=corp,
        )  # fmt: skip
        s.answered += len(run.test_rows)
        s.answer_seconds += ans["seconds"]
        note = run.zs_note
        if corp is not None:
            tokens = f"{ans['prompt_tokens']} prompt tokens on average"
            note = "; ".join(x for x in (run.zs_note, tokens) if x)
        run.methods[name] = method_entry(_score(s, run, ans), "fmrilm", note=note)
        if s.free_text:
            note = "greedy generation parsed by the task; invalid answers counted wrong"
            if run.task.kind == "regression":
                note = (
                    "greedy generation parsed as a number; invalid answers take the training mean"
                )
            free = "fmrilm free text" + (s.sfx if corp is not None else "")
            res = _score(s, run, ans, "free_pred", fill=run.fill)
            run.methods[free] = method_entry(res, "fmrilm", note=note)


def few_shot(s: EvalSetup, run: TaskRun) -> None:
    """K labelled exemplars per class in the prompt, for each K until the context is full."""
    if not run.fewshot_form:
        return
    values, fitted = [], []
    for k in s.shots:
        try:
            ans = answer_rows(
                s.model, run.task, run.test_rows, s.span_of, cohort=s.cohort, shots=k,
                free_text=False, bf16=s.bf16, seed=k, corpus=s.described,
            )  # fmt: skip
        except ContextTooLong as exc:
            s.notes.append(f"in-context K>={k} skipped: {exc}")
            break
        fitted.append(k)
        res = _score(s, run, ans)
        run.methods[f"fmrilm in-context K={k}{s.sfx}"] = method_entry(
            res, "fmrilm", note=f"{ans['prompt_tokens']} prompt tokens on average"
        )
        values.append(res)
    if values:
        run.curves[f"fmrilm in-context{s.sfx}"] = shots_curve(run.task, fitted, values)


def adapted(s: EvalSetup, run: TaskRun, *, full: bool) -> None:
    """Tuned on K training subjects per class (LoRA, or ``full``: every weight), for each K;
    the weights are restored after each K and at the end, whatever happens."""
    if not run.fewshot_form:
        return
    label = "full fine-tuning" if full else "LoRA"
    values, fitted = [], []
    snapshot = snapshot_weights(s.model, everything=full)
    try:
        for k in s.shots:
            values.append(_adapted_at(s, run, k, label, full))
            fitted.append(k)
            restore_weights(s.model, snapshot)
    finally:
        restore_weights(s.model, snapshot)
        del snapshot
    if values:
        run.curves[f"fmrilm {label}{s.sfx}"] = shots_curve(run.task, fitted, values)


def _adapted_at(s: EvalSetup, run: TaskRun, k: int, label: str, full: bool) -> dict:
    tuned = adapt_to_shots(
        s.model, s.cohort, run.task, k, s.codes, s.span_patches, steps=s.adapt_steps,
        bf16=s.bf16, corpus=s.described, full=full,
    )  # fmt: skip
    ans = answer_rows(
        s.model, run.task, run.test_rows, s.span_of, free_text=False, bf16=s.bf16, seed=k,
        corpus=s.described,
    )  # fmt: skip
    res = _score(s, run, ans)
    what = "every weight" if full else "LoRA"
    run.methods[f"fmrilm {label} K={k}{s.sfx}"] = method_entry(
        res,
        "fmrilm",
        note=f"{what} tuned {s.adapt_steps} steps on {len(tuned['subjects'])} training subjects",
    )
    return res


def tokenizer_probe(s: EvalSetup, run: TaskRun) -> None:
    """A linear model on the tokenizer's scan embeddings."""
    res = embedding_probe(
        s.model.fmri_tokenizer, s.cohort, run.task, run.train_rows, run.test_rows, s.n_boot,
        s.embeddings,
    )  # fmt: skip
    run.methods["fmrilm tokenizer probe"] = method_entry(
        res, "fmrilm", note="linear model on the tokenizer's scan embeddings (training split)"
    )


def llm_state_probe(s: EvalSetup, run: TaskRun) -> None:
    """A linear model on the backbone's answer-position state of the zero-shot prompt."""
    train = run.train_rows
    if s.max_rows is not None:
        train = evenly_spaced(train, STATE_PROBE_TRAIN * s.max_rows)
    res = state_probe(
        s.model, run.task, train, run.test_rows, s.span_of, n_boot=s.n_boot, bf16=s.bf16,
        corpus=s.described, progress=s.progress,
    )  # fmt: skip
    run.methods[f"fmrilm LLM-state probe{s.sfx}"] = method_entry(
        res,
        "fmrilm",
        note=f"linear model on the backbone's last hidden state at the answer position "
        f"of the zero-shot prompt, fitted on {res['n_train']} training rows",
    )


def baselines_step(s: EvalSetup, run: TaskRun) -> None:
    """Majority, FC + linear model (and its few-shot curve), descriptors and the oracle."""
    base, curves, notes = task_baselines(
        s.cohort, run.task, run.train_rows, run.test_rows, n_boot=s.n_boot,
        shots=s.shots if FEWSHOT_MODES & set(s.modes) else (), corpus=s.view,
    )  # fmt: skip
    for name, (res, group) in base.items():
        run.methods[name] = method_entry(res, group)
    run.curves.update(curves)
    s.notes += notes
    oracle = oracle_for_rows(s.cohort, run.task, run.test_rows, n_boot=s.n_boot)
    if oracle is not None:
        run.methods["oracle"] = method_entry(oracle, "oracle", note="simulator ground truth")


MODE_STEPS: dict[str, Callable[[EvalSetup, TaskRun], None]] = {
    "zero-shot": zero_shot,
    "few-shot": few_shot,
    "lora": partial(adapted, full=False),
    "full": partial(adapted, full=True),
    "probe": tokenizer_probe,
    "state-probe": llm_state_probe,
}


def start_task(s: EvalSetup, task) -> TaskRun:
    """A task's held-out and training rows, before any mode has run."""
    train_rows = label_rows(s.cohort, task, "train")
    test_rows = eval_rows(s.cohort, task, s.split, s.max_rows)
    zs_note = None
    if s.tuned is not None and task.name not in s.tuned:
        zs_note = "not instruction-tuned on this task: a zero-shot answer"
    fill = None
    if task.kind == "regression":
        fill = float(np.mean(train_rows["_label"].astype(float)))
    return TaskRun(task, test_rows, train_rows, row_groups(test_rows), fill, zs_note)


def evaluate_task(s: EvalSetup, task) -> dict[str, Any]:
    """The report-schema entry of one task: every mode of ``s.modes``, then the baselines."""
    run = start_task(s, task)
    if not run.fewshot_form and FEWSHOT_MODES & set(s.modes):
        s.notes.append(f"{task.name}: no few-shot form (the question differs per scan)")
    for mode, step in MODE_STEPS.items():
        if mode in s.modes:
            step(s, run)
    if s.baselines:
        baselines_step(s, run)
    entry: dict[str, Any] = {"kind": task.kind, "n_test": len(run.test_rows)}
    entry["methods"] = run.methods
    if task.kind == "classification":
        entry["classes"] = [str(v) for v in task.values]
    if run.curves:
        entry["fewshot"] = run.curves
    return entry


def evaluate_tasks(s: EvalSetup, tasks: list) -> dict[str, Any]:
    """:func:`evaluate_task` of every task, by name."""
    return {
        task.name: evaluate_task(s, task)
        for task in tqdm(tasks, desc="tasks", disable=not s.progress)
    }


def ask_multi_question(s: EvalSetup, tasks: list, result_tasks: dict[str, Any]) -> None:
    """Subject-level column tasks asked together: one method per task, and the time saved."""
    if s.answered:
        s.notes.append(
            f"one question per prompt took {s.answer_seconds / s.answered:.2f} s per answer "
            "(constrained scoring)"
        )
    group = [t for t in tasks if t.level == "subject" and t.label_from in ("column", "bins")]
    if len(group) < 2:
        s.notes.append("multi-question: fewer than 2 subject-level tasks to ask together")
        return
    rows = None
    for t in group:
        r = label_rows(s.cohort, t, s.split)
        rows = r if rows is None else rows[rows["scan_id"].isin(r["scan_id"])]
    rows = evenly_spaced(rows, s.max_rows)
    res = answer_multi(s.model, group, rows, s.span_of, bf16=s.bf16, corpus=s.described)
    for t in group:
        r = res[t.name]
        scores = score_answers(
            t, r["y_true"], r["y_pred"], np.array(r["proba"]), n_boot=s.n_boot,
            groups=row_groups(rows),
        )  # fmt: skip
        result_tasks[t.name]["methods"][f"fmrilm multi-question{s.sfx}"] = method_entry(
            scores,
            "fmrilm",
            note=f"all of {', '.join(x.name for x in group)} asked in one prompt "
            f"({len(rows)} held-out rows)",
        )
    per = res["seconds"] / max(len(rows), 1)
    s.notes.append(
        f"multi-question: {len(group)} questions per prompt took {per:.2f} s per scan "
        f"({per / len(group):.2f} s per answer; constrained scoring)"
    )


def throughput(s: EvalSetup) -> dict[str, Any] | None:
    """Zero-shot answers per second (None when nothing was answered)."""
    if not s.answered:
        return None
    return {
        "scans_per_s": round(s.answered / max(s.answer_seconds, 1e-9), 3),
        "how": "zero-shot questions answered per second by constrained scoring (one question "
        "per prompt; free-text generation not included)",
    }


def held_out_retrieval(s: EvalSetup, corpus) -> dict[str, Any] | None:
    """fMRI <-> text retrieval among the split's scans (at most 4 x ``max_rows``), or None and
    a note saying why it was skipped."""
    if corpus is None:
        s.notes.append("retrieval skipped: pass --corpus for the scans' texts")
        return None
    if not s.model.fmri_tokenizer.text_dim:
        s.notes.append("retrieval skipped: the tokenizer was trained without text alignment")
        return None
    rows = s.cohort.split(s.split)
    if s.max_rows is not None and len(rows) > 4 * s.max_rows:
        rows = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, 4 * s.max_rows).astype(int))]
    try:
        return retrieval_both_ways(s.model.fmri_tokenizer, s.cohort, rows, corpus)
    except FmrilmError as exc:
        s.notes.append(f"retrieval skipped: {exc}")
        return None
