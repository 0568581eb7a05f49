"""Stage 3 evaluation (``fmrilm eval``): questions about held-out scans, next to baselines.

For each task (:mod:`fmrilm.tasks.registry`) on its held-out rows (:func:`task_rows`, one scan
per subject for subject-level tasks; the split is subject-disjoint):

* ``zero-shot``: the question alone. Answers are scored two ways:

  - **constrained**: the log-likelihood of every valid candidate answer
    (:func:`fmrilm.evaluation.scoring.answer_rows`); the softmax over candidates gives class
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

This recipe resolves the inputs (model, cohort, corpus, tasks, the scans' codes) and writes the
report; the work is :mod:`fmrilm.evaluation.run` (one function per mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmrilm.checkpoint import versions
from fmrilm.corpus.build import Corpus
from fmrilm.data.cohort import Cohort
from fmrilm.errors import FmrilmError
from fmrilm.evaluation.report import write_report
from fmrilm.evaluation.run import (
    FEWSHOT_MODES,
    EvalSetup,
    ask_multi_question,
    evaluate_tasks,
    held_out_retrieval,
    scan_steps_note,
    span_reader,
    throughput,
)
from fmrilm.model.fusion import FMRILM
from fmrilm.runtime import use_bf16
from fmrilm.tasks import as_corpus_view, max_shots, resolve_tasks
from fmrilm.tokenizer.codes import encode_split

MODES = ("zero-shot", "few-shot", "lora", "full", "probe", "state-probe")


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


def _check_options(modes, shots, max_rows, scan_steps) -> tuple[list[int], int | None]:
    """The sorted distinct K of ``shots`` and the steps cap; an error for a bad option."""
    bad = sorted(set(modes) - set(MODES))
    if bad or not modes:
        raise FmrilmError(f"--mode must be among {', '.join(MODES)}, got {bad or 'nothing'}")
    shots = sorted({int(k) for k in shots})
    if (FEWSHOT_MODES & set(modes)) and (not shots or min(shots) < 1):
        raise FmrilmError(f"--shots must be positive integers, got {shots}")
    if max_rows is not None and max_rows < 2:
        raise FmrilmError(f"--max-scans must be at least 2, got {max_rows}")
    steps_cap = _scan_steps_arg(scan_steps)
    if scan_steps is not None and {"lora", "full"} & set(modes):
        raise FmrilmError(
            "--scan-steps cannot be combined with --mode lora/full: adaptation trains on the "
            "span the model was tuned on"
        )
    return shots, steps_cap


def _load_model(model_dir) -> FMRILM:
    model = FMRILM.from_pretrained(model_dir)
    if model.projector is not None:
        raise FmrilmError(f"{model_dir}: evaluation needs a model with discrete fMRI input")
    return model


def _load_cohort(data, split: str) -> Cohort:
    cohort = Cohort(data)
    if not (cohort.manifest["split"] == split).any():
        raise FmrilmError(f"{cohort.root}: the {split!r} split is empty")
    return cohort


def _load_corpus(corpus, descriptors: bool):
    """The corpus and its view (None, None without one)."""
    corpus_obj = Corpus(corpus) if corpus is not None else None
    if descriptors and corpus_obj is None:
        raise FmrilmError("--descriptors needs --corpus (the scans' descriptor records)")
    return corpus_obj, as_corpus_view(corpus_obj) if corpus_obj is not None else None


def _resolve_tasks(cohort, tasks, corpus_obj, notes: list[str]) -> list:
    """The classification and regression tasks asked (free-text tasks get a note)."""
    task_objs = list(resolve_tasks(cohort, list(tasks) if tasks else None, corpus_obj))
    text_tasks = [t.name for t in task_objs if t.kind == "text"]
    task_objs = [t for t in task_objs if t.kind != "text"]
    if text_tasks:
        notes.append(
            f"{', '.join(text_tasks)}: free-text tasks are not scored here (descriptions are "
            "checked fact by fact in benchmarks/pretrain_quality.py)"
        )
    if not task_objs:
        raise FmrilmError("no classification or regression task to evaluate")
    return task_objs


def _check_shots(cohort, task_objs, modes, shots) -> None:
    """K too large for a task: an error before any work."""
    if not FEWSHOT_MODES & set(modes):
        return
    for task in task_objs:
        most = max_shots(cohort, task)
        if task.label_from != "corpus_fact" and max(shots) > most:
            raise FmrilmError(
                f"--shots K={max(shots)} but task {task.name!r} has at most {most} training "
                "subjects per class (regression: half its training subjects)"
            )


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
    shots, steps_cap = _check_options(modes, shots, max_rows, scan_steps)
    model = _load_model(model_dir)
    bf16 = use_bf16(model.pretrain_config.bf16) if bf16 is None else bf16
    cohort = _load_cohort(data, split)
    corpus_obj, view = _load_corpus(corpus, descriptors)
    notes: list[str] = []
    task_objs = _resolve_tasks(cohort, tasks, corpus_obj, notes)
    instruct = model.info.get("instruct") or {}
    span_patches = int(instruct.get("config", {}).get("span_patches", 0)) or (
        model.pretrain_config.span_patches
    )
    _check_shots(cohort, task_objs, modes, shots)
    log(f"encoding the scans of {cohort.root} ...")
    codes = encode_split(model.fmri_tokenizer, cohort, None, progress=progress)
    span_of = span_reader(codes, span_patches, steps_cap, whole=scan_steps is not None)
    if scan_steps is not None:
        notes.append(scan_steps_note(model, codes, span_of, scan_steps, steps_cap))
    setup = EvalSetup(
        model, cohort, split, list(modes), shots, codes, span_of, span_patches, n_boot=n_boot,
        max_rows=max_rows, adapt_steps=adapt_steps, free_text=free_text, baselines=baselines,
        bf16=bf16, progress=progress, described=view if descriptors else None, view=view,
        tuned={t["name"] for t in instruct.get("tasks", [])} if instruct else None, notes=notes,
    )  # fmt: skip
    result_tasks = evaluate_tasks(setup, task_objs)
    if multi_question:
        ask_multi_question(setup, task_objs, result_tasks)
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
    if throughput(setup):
        metrics["throughput"] = throughput(setup)
    found = held_out_retrieval(setup, corpus_obj) if retrieval else None
    if found is not None:
        metrics["retrieval"] = found
    if report is not None:
        log(f"report: {write_report(metrics, report)}")
    return metrics
