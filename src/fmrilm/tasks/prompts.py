"""Stage-3 instruction examples: prompts with fMRI placeholders, target answers and labels.

An :class:`InstructionExample` is one user turn and its target reply. The user turn is a list of
segments, in order: ``("text", string)`` pieces to tokenise verbatim and ``("scan", scan_id)``
placeholders where the model splices in that scan's fMRI tokens. The last scan segment is the
query scan; few-shot exemplar scans come before it, each followed by its answer::

    zero-shot   [("scan", q), ("text", "\\n[context line\\n]question")]
    few-shot    [("text", intro), ("scan", e1), ("text", "Answer: a1\\n"), ...,
                 ("scan", q), ("text", "\\n[context line\\n]question")]
    several     question = "Answer each question on its own numbered line.\\n1. ...\\n2. ..."
    questions   answer   = "1. male\\n2. 53"     (:func:`format_answers` / :func:`parse_answers`)

Text pieces carry their own newlines, so concatenating them with the scan spans gives the
prompt. The optional context line states the atlas, TR and paradigm of the query scan and never
a label: a field that would give away an asked label is left out (the paradigm when the task
state is asked, the TR and atlas when the site is asked, since sites differ in TR).

The optional descriptor line (:func:`descriptor_line`) summarises the query scan's own imaging
descriptors from the corpus in the corpus's words -- internal coupling of each network, the
notable between-network couplings, low-frequency amplitude per network, mean connectivity,
global efficiency -- each a z-score against the training split's norms, put into words
(:func:`fmrilm.corpus.text.qualify`). Only signal-derived families enter: never the task family
(it reads the events table, i.e. the paradigm) nor acquisition quality (which tells the site).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fmrilm.corpus.text import qualify
from fmrilm.errors import FmrilmError
from fmrilm.tasks.base import Task
from fmrilm.tasks.facts import as_corpus_view
from fmrilm.tasks.registry import resolve_tasks
from fmrilm.tasks.rows import task_rows

if TYPE_CHECKING:
    from collections.abc import Callable

    from fmrilm.data.cohort import Cohort

MULTI_HEADER = "Answer each question on its own numbered line."
FEWSHOT_INTRO = (
    "Example scans follow, each with its answer to the question below; "
    "the last scan is the one to answer about.\n"
)
ANSWER_PREFIX = "Answer: "
MAX_QUESTIONS = 4  # questions in one multi-question prompt
# context fields that reveal a task's label, by the manifest column the task reads
_REVEALS = {"task": ("paradigm",), "paradigm": ("paradigm",), "site": ("tr", "atlas")}


@dataclass
class InstructionExample:
    """One prompt (``segments``), its target reply (``answer``) and per-question metadata.

    ``tasks``, ``labels`` (raw labels) and ``candidates`` (constrained-scoring answers, empty
    for text tasks) have one entry per question, in the order the questions are asked.
    """

    scan_id: str
    segments: list[tuple[str, str]]
    answer: str
    tasks: tuple[str, ...]
    labels: tuple
    candidates: tuple[tuple[str, ...], ...]

    def scan_ids(self) -> list[str]:
        """Scans in the prompt, in order (the last one is the query scan)."""
        return [value for kind, value in self.segments if kind == "scan"]

    def prompt_text(self, scan: str = "<scan:{}>") -> str:
        """The prompt with each scan shown as ``scan.format(scan_id)`` (for logs and reading)."""
        return "".join(scan.format(v) if k == "scan" else v for k, v in self.segments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "segments": [list(s) for s in self.segments],
            "answer": self.answer,
            "tasks": list(self.tasks),
            "labels": list(self.labels),
            "candidates": [list(c) for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstructionExample:
        return cls(
            scan_id=d["scan_id"],
            segments=[(k, v) for k, v in d["segments"]],
            answer=d["answer"],
            tasks=tuple(d["tasks"]),
            labels=tuple(d["labels"]),
            candidates=tuple(tuple(c) for c in d["candidates"]),
        )


# ------------------------------------------------------------------------------------------
# numbered answers

_MARKER = re.compile(r"(?<!\S)(\d{1,3})[.)](?=\s|$)")


def format_answers(answers: Sequence[str]) -> str:
    """'1. a\\n2. b' (newlines inside an answer become spaces, so each stays on its line)."""
    return "\n".join(f"{i}. {' '.join(str(a).split())}" for i, a in enumerate(answers, 1))


def parse_answers(text: str | None, n: int) -> list[str | None]:
    """The ``n`` answers of a numbered reply; None for each one that is missing or empty.

    A marker ``k.`` or ``k)`` (1 <= k <= n) opening a line counts in any order (the first of a
    number wins); one inside a line counts only as the next number after the previous marker,
    so a number inside an answer ("1. 53. 2. female") is not taken for a marker. A reply without
    markers is accepted positionally only when it has exactly ``n`` non-empty lines (or is one
    answer for ``n=1``).
    """
    out: list[str | None] = [None] * n
    if not text:
        return out
    marks: list[tuple[int, int, int]] = []  # (number, start, end)
    seen: set[int] = set()
    for m in _MARKER.finditer(text):
        k = int(m.group(1))
        line_start = text[: m.start()].rsplit("\n", 1)[-1].strip() == ""
        expected = marks[-1][0] + 1 if marks else 1
        if 1 <= k <= n and k not in seen and (line_start or k == expected):
            marks.append((k, m.start(), m.end()))
            seen.add(k)
    if not marks:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if n == 1:
            return [" ".join(lines) or None]
        return lines if len(lines) == n else out
    for i, (k, _, end) in enumerate(marks):
        stop = marks[i + 1][1] if i + 1 < len(marks) else len(text)
        out[k - 1] = " ".join(text[end:stop].split()) or None
    return out


# ------------------------------------------------------------------------------------------
# context


def context_line(row: pd.Series, tasks: Sequence[Task]) -> str | None:
    """Acquisition facts of a scan, minus any field that gives away an asked task's label."""
    hidden = {f for t in tasks for f in _REVEALS.get(t.column or "", ())}
    parts = []
    if "atlas" not in hidden and row.get("atlas"):
        n = row.get("n_rois")
        parts.append(f"atlas {row['atlas']}" + (f" ({int(n)} regions)" if pd.notna(n) else ""))
    if "tr" not in hidden and pd.notna(row.get("tr")):
        parts.append(f"TR {float(row['tr']):g} s")
    if "paradigm" not in hidden and row.get("paradigm") in ("rest", "task"):
        parts.append("resting-state run" if row["paradigm"] == "rest" else "task-based run")
    if not parts:
        return None
    line = "Acquisition: " + ", ".join(parts) + "."
    return None if _reveals(line, row, tasks) else line


def _reveals(text: str, row: pd.Series, tasks: Sequence[Task]) -> bool:
    """Whether an asked class label (raw value or answer) occurs in ``text`` as whole words."""
    low = text.lower()
    for task in tasks:
        raw = task.label(row) if task.kind == "classification" else None
        if raw is None:
            continue
        words = {task.answer(raw)} | ({raw} if isinstance(raw, str) else set())
        for word in words:
            if re.search(r"(?<![\w-])" + re.escape(word.lower()) + r"(?![\w-])", low):
                return True
    return False


DESCRIPTOR_HEADER = "Imaging summary (vs. training norms): "


SUMMARY_PREFIXES = ("fc.within.", "fc.between.", "spectral.alff.")
SUMMARY_SCALARS = {"fc.mean": "mean connectivity", "graph.global_efficiency": "global efficiency"}


def summary_fields(record: dict[str, Any]) -> dict[str, float]:
    """Descriptor name -> z of the fields the descriptor line states, in its order."""
    out: dict[str, float] = {}
    names = [k for p in SUMMARY_PREFIXES for k in sorted(record) if k.startswith(p)]
    for name in names + list(SUMMARY_SCALARS):
        z = (record.get(name) or {}).get("z")
        if isinstance(z, (int, float)) and np.isfinite(z):
            out[name] = float(z)
    return out


def descriptor_line(record: dict[str, Any]) -> str | None:
    """The scan's descriptor summary in words (None when the record has none of its fields).

    ``record`` is the scan's corpus record (name -> {"z": ...}). Its words are network names
    and qualifiers only, so no label can enter it.
    """
    fields = summary_fields(record)

    def per_network(prefix: str) -> list[tuple[str, float]]:
        return [(k[len(prefix) :], z) for k, z in fields.items() if k.startswith(prefix)]

    parts = []
    within = per_network("fc.within.")
    if within:
        listing = ", ".join(f"{net} {qualify(z)}" for net, z in within)
        parts.append(f"internal coupling per network: {listing}")
    between = [(p.replace("__", "-"), z) for p, z in per_network("fc.between.")]
    if between:
        notable = [f"{pair} {qualify(z)}" for pair, z in between if qualify(z) != "typical"]
        listing = ", ".join(notable) + " (others typical)" if notable else "all typical"
        parts.append(f"coupling between networks: {listing}")
    alff = per_network("spectral.alff.")
    if alff:
        listing = ", ".join(f"{net} {qualify(z)}" for net, z in alff)
        parts.append(f"low-frequency amplitude per network: {listing}")
    parts += [f"{what} {qualify(fields[k])}" for k, what in SUMMARY_SCALARS.items() if k in fields]
    if not parts:
        return None
    return DESCRIPTOR_HEADER + "; ".join(parts) + "."


# ------------------------------------------------------------------------------------------
# few-shot exemplars


def fewshot_exemplars(
    cohort: Cohort, task: Task, k: int, rng: np.random.Generator, exclude_subject: str | None
) -> pd.DataFrame:
    """``k`` training subjects per class (regression: ``2k`` subjects), shuffled.

    Drawn from the task's training-split rows only, never from ``exclude_subject`` (the query's
    subject); one scan per subject and class.
    """
    _check_fewshot_task(task)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise FmrilmError(f"few-shot K must be a positive integer, got {k!r}")
    rows = task_rows(cohort, task, "train")
    rows = rows[rows["subject"] != exclude_subject]
    if task.kind == "regression":
        rows = rows.drop_duplicates("subject")
        if len(rows) < 2 * k:
            raise FmrilmError(
                f"few-shot K={k} needs {2 * k} training subjects for task {task.name!r} but only "
                f"{len(rows)} are available"
            )
        picked = rows.iloc[np.sort(rng.choice(len(rows), 2 * k, replace=False))]
    else:
        labels = rows.apply(task.label, axis=1)
        parts = []
        for value, candidate in zip(task.values, task.candidates, strict=True):
            members = rows[labels == value].drop_duplicates("subject")
            if len(members) < k:
                raise FmrilmError(
                    f"few-shot K={k} but class {candidate!r} of task {task.name!r} has only "
                    f"{len(members)} training subjects"
                )
            parts.append(members.iloc[np.sort(rng.choice(len(members), k, replace=False))])
        picked = pd.concat(parts)
    return picked.iloc[rng.permutation(len(picked))]


def max_shots(cohort: Cohort, task: Task) -> int:
    """The largest K :func:`fewshot_exemplars` can draw for ``task`` (0 without a few-shot form).

    Classification: the fewest training subjects of any class; regression: half the training
    subjects (it draws ``2K``).
    """
    if task.kind == "text" or task.label_from == "corpus_fact":
        return 0
    rows = task_rows(cohort, task, "train")
    if task.kind == "regression":
        return rows["subject"].nunique() // 2
    labels = rows.apply(task.label, axis=1)
    return min(int(rows.loc[labels == value, "subject"].nunique()) for value in task.values)


def _check_fewshot_task(task: Task) -> None:
    if task.kind == "text" or task.label_from == "corpus_fact":
        raise FmrilmError(
            f"task {task.name!r} has no few-shot form (its question or answer differs per scan)"
        )


# ------------------------------------------------------------------------------------------
# one example


def make_example(
    tasks: Task | Sequence[Task],
    row: pd.Series,
    rng: np.random.Generator,
    *,
    corpus: Any = None,
    context: bool = False,
    shots: pd.DataFrame | None = None,
    describe: bool = False,
) -> InstructionExample:
    """One prompt about the scan of manifest ``row`` asking every task in ``tasks``.

    ``rng`` chooses the question phrasings. ``corpus`` (a Corpus, its folder or a CorpusView)
    replaces the corpus of corpus tasks. ``context`` adds the acquisition line. ``shots`` are
    exemplar manifest rows (:func:`fewshot_exemplars`) shown with their answers before the
    query; few-shot prompts ask a single question. ``describe`` adds each scan's descriptor
    line (:func:`descriptor_line`, read from ``corpus``) after it.
    """
    tasks, view = _prompt_tasks(tasks, corpus, describe)
    summary = partial(_summary, view if describe else None)
    scan_id = row["scan_id"]
    labels = _labels(tasks, row)
    question, answer = _question_and_answer(tasks, row, labels, rng)
    tail = "\n" + summary(scan_id)
    if context:
        line = context_line(row, tasks)
        tail += f"{line}\n" if line else ""
    segments = _shot_segments(tasks, row, shots, summary) if shots is not None else []
    segments += [("scan", scan_id), ("text", tail + question)]
    return InstructionExample(
        scan_id=scan_id,
        segments=_merge_text(segments),
        answer=answer,
        tasks=tuple(t.name for t in tasks),
        labels=tuple(labels),
        candidates=tuple(t.candidate_texts() for t in tasks),
    )


def _prompt_tasks(
    tasks: Task | Sequence[Task], corpus: Any, describe: bool
) -> tuple[list[Task], Any]:
    """The tasks of one prompt (checked, corpus tasks reading ``corpus``) and the corpus view."""
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise FmrilmError("make_example needs at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise FmrilmError(f"a prompt asks each task once, got {names}")
    view = as_corpus_view(corpus) if corpus is not None else None
    if view is not None:
        tasks = [replace(t, corpus=view) if t.label_from.startswith("corpus") else t for t in tasks]
    if describe and view is None:
        raise FmrilmError("descriptor lines need the corpus (pass --corpus)")
    return tasks, view


def _summary(view: Any, scan: str) -> str:
    """The scan's descriptor line and a newline ("" without a view or a line)."""
    line = descriptor_line(view.record(scan)) if view is not None else None
    return f"{line}\n" if line else ""


def _labels(tasks: Sequence[Task], row: pd.Series) -> list[Any]:
    labels = []
    for t in tasks:
        raw = t.label(row)
        if raw is None:
            raise FmrilmError(f"scan {row['scan_id']} has no label for task {t.name!r}")
        labels.append(raw)
    return labels


def _question_and_answer(
    tasks: Sequence[Task], row: pd.Series, labels: Sequence[Any], rng: np.random.Generator
) -> tuple[str, str]:
    """The question (numbered when several) and the target reply."""
    questions = [t.question(row, rng) for t in tasks]
    answers = [t.answer(raw) for t, raw in zip(tasks, labels, strict=True)]
    if len(tasks) == 1:
        return questions[0], answers[0]
    return MULTI_HEADER + "\n" + format_answers(questions), format_answers(answers)


def _shot_segments(
    tasks: Sequence[Task],
    row: pd.Series,
    shots: pd.DataFrame,
    summary: Callable[[str], str],
) -> list[tuple[str, str]]:
    """The few-shot intro and each exemplar scan with its answer (none for no shots)."""
    if not len(shots):
        return []
    if len(tasks) != 1:
        raise FmrilmError("few-shot prompts ask a single question; got several tasks")
    task = tasks[0]
    _check_fewshot_task(task)
    if (shots["subject"] == row["subject"]).any():
        raise FmrilmError(f"few-shot exemplars include the query subject {row['subject']!r}")
    segments = [("text", FEWSHOT_INTRO)]
    for _, shot in shots.iterrows():
        shot_label = task.label(shot)
        if shot_label is None:
            raise FmrilmError(f"exemplar {shot['scan_id']} has no label for {task.name!r}")
        segments.append(("scan", shot["scan_id"]))
        line = summary(shot["scan_id"])
        segments.append(("text", f"\n{line}" if line else ""))
        segments.append(("text", f"{ANSWER_PREFIX}{task.answer(shot_label)}\n"))
    return segments


def _merge_text(segments: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adjacent text pieces joined (one text run between scans)."""
    out: list[tuple[str, str]] = []
    for kind, value in segments:
        if kind == "text" and out and out[-1][0] == "text":
            out[-1] = ("text", out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


# ------------------------------------------------------------------------------------------
# a data set of examples


def build_examples(
    cohort: Cohort,
    tasks: Sequence[Task | str] | None,
    split: str,
    *,
    n_per_task: int | None = None,
    multi_question: float = 0.0,
    context_prob: float = 0.0,
    seed: int = 0,
    corpus: Any = None,
    descriptor_prob: float = 0.0,
) -> list[InstructionExample]:
    """Instruction examples of ``split`` for every task; deterministic for ``seed``.

    Each task contributes its :func:`task_rows` (``n_per_task``: that many, drawn without
    replacement and cycling through a fresh permutation when more are asked than exist). With
    probability ``multi_question`` an example also asks up to 3 other tasks that label the same
    scan (text tasks are always asked alone); with probability ``context_prob`` it carries the
    acquisition line, and with probability ``descriptor_prob`` the scan's descriptor line (needs
    ``corpus``). Examples of all tasks are shuffled together, so rest and task scans mix.
    Corpus tasks are re-seeded with ``seed``: another seed asks other facts and shows other
    description variants. Evaluate with ``multi_question=0`` so every task is scored on exactly
    its own rows.
    """
    _check_build_args(n_per_task, multi_question, context_prob, descriptor_prob)
    view = as_corpus_view(corpus)
    if descriptor_prob > 0 and view is None:
        raise FmrilmError(
            f"descriptor_prob={descriptor_prob} needs the corpus (pass --corpus, or set "
            "descriptor_prob=0)"
        )
    tasks = [_for_build(t, view, seed) for t in _resolve(cohort, tasks, view)]
    rng = np.random.default_rng(seed)
    examples = []
    for task in tasks:
        rows = task_rows(cohort, task, split)
        for i in _draw(len(rows), n_per_task, rng):
            row = rows.iloc[int(i)]
            asked = _asked(task, tasks, row, multi_question, rng)
            examples.append(
                make_example(
                    asked, row, rng, corpus=view, context=rng.random() < context_prob,
                    describe=descriptor_prob > 0 and rng.random() < descriptor_prob,
                )
            )  # fmt: skip
    return [examples[i] for i in rng.permutation(len(examples))]


def _check_build_args(n_per_task: int | None, *probabilities: float) -> None:
    names = ("multi_question", "context_prob", "descriptor_prob")
    for name, p in zip(names, probabilities, strict=True):
        if not 0.0 <= p <= 1.0:
            raise FmrilmError(f"{name} must be a probability in [0, 1], got {p}")
    if n_per_task is not None and n_per_task < 1:
        raise FmrilmError(f"n_per_task must be a positive integer, got {n_per_task}")


def _resolve(cohort: Cohort, tasks: Sequence[Task | str] | None, view: Any) -> list[Task]:
    """Tasks as given, names resolved (None: every task that applies)."""
    if tasks is None:
        return resolve_tasks(cohort, None, view)
    return [resolve_tasks(cohort, [t], view)[0] if isinstance(t, str) else t for t in tasks]


def _asked(
    task: Task,
    tasks: Sequence[Task],
    row: pd.Series,
    multi_question: float,
    rng: np.random.Generator,
) -> list[Task]:
    """``task``, and with probability ``multi_question`` up to 3 other non-text tasks that
    label ``row``, in a random order (text tasks are always asked alone)."""
    if task.kind == "text" or rng.random() >= multi_question:
        return [task]
    others = [t for t in tasks if t is not task and t.kind != "text" and t.label(row) is not None]
    if not others:
        return [task]
    m = int(rng.integers(1, min(MAX_QUESTIONS - 1, len(others)) + 1))
    asked = [task] + [others[j] for j in rng.choice(len(others), m, replace=False)]
    return [asked[j] for j in rng.permutation(len(asked))]


def _for_build(task: Task, corpus: Any, seed: int) -> Task:
    if not task.label_from.startswith("corpus"):
        return task
    return replace(task, seed=seed, corpus=corpus if corpus is not None else task.corpus)


def _draw(n: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """``k`` row indices out of ``n``: permutations, concatenated until ``k`` are drawn."""
    if k is None:
        return np.arange(n)
    reps = -(-k // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:k]


__all__ = [
    "ANSWER_PREFIX",
    "InstructionExample",
    "build_examples",
    "context_line",
    "descriptor_line",
    "fewshot_exemplars",
    "format_answers",
    "max_shots",
    "make_example",
    "parse_answers",
]
