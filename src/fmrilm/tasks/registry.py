"""Stage-3 task registry: the built-in tasks, tasks for any phenotype column, and resolving
task names for a cohort.

Every builder fits its task on the cohort's **training split only** (classes, bin edges,
regression grid), so a value seen only in the test split is never offered as an answer. What a
task is and how it labels, answers and parses: :mod:`fmrilm.tasks.base`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError
from fmrilm.tasks.base import Task, format_number, plain_words, py_value
from fmrilm.tasks.facts import FACT_CLASSES, as_corpus_view
from fmrilm.tasks.rows import training_labels
from fmrilm.tasks.templates import (
    QUESTIONS,
    bin_questions,
    categorical_questions,
    numeric_questions,
    sex_words,
    task_words,
)

if TYPE_CHECKING:
    from fmrilm.data.cohort import Cohort
    from fmrilm.tasks.facts import CorpusView

MAX_GRID = 41


# ------------------------------------------------------------------------------------------
# builders (fitted on the training split)


def classification_task(
    cohort: Cohort,
    name: str,
    column: str,
    *,
    level: str = "subject",
    questions: tuple[str, ...] | None = None,
    words: Callable[[Any], str] = plain_words,
) -> Task:
    """Classes = the distinct training-split values of ``column`` (sorted), shown by ``words``."""
    values = sorted({py_value(v) for v in training_labels(cohort, name, column, level)}, key=str)
    if len(values) < 2:
        raise FmrilmError(
            f"task {name!r}: the training split has {len(values)} class(es) of {column!r} "
            f"({values}); a classification task needs at least 2"
        )
    return Task(
        name=name,
        kind="classification",
        column=column,
        level=level,
        questions=questions or categorical_questions(column),
        candidates=tuple(words(v) for v in values),
        values=tuple(values),
    )


def regression_task(
    cohort: Cohort,
    name: str,
    column: str,
    *,
    unit: str = "",
    decimals: int | None = None,
    questions: tuple[str, ...] | None = None,
) -> Task:
    """Numeric answers; ``decimals`` from the training values' spread unless given."""
    y = pd.to_numeric(training_labels(cohort, name, column, "subject"), errors="coerce").dropna()
    if y.nunique() < 2:
        raise FmrilmError(
            f"task {name!r}: {column!r} takes fewer than 2 distinct values in the training split"
        )
    d = auto_decimals(y.to_numpy()) if decimals is None else int(decimals)
    return Task(
        name=name,
        kind="regression",
        column=column,
        level="subject",
        questions=questions or numeric_questions(column, unit),
        unit=unit,
        decimals=d,
        grid=nice_grid(float(y.min()), float(y.max()), d),
    )


def binned_task(
    cohort: Cohort,
    name: str,
    column: str,
    *,
    n_bins: int = 3,
    unit: str = "",
    decimals: int | None = None,
    questions: tuple[str, ...] | None = None,
) -> Task:
    """Classes = training-split quantile bins (tertiles by default) of a numeric column."""
    y = pd.to_numeric(training_labels(cohort, name, column, "subject"), errors="coerce").dropna()
    y = y.to_numpy(dtype=float)
    d = auto_decimals(y) if decimals is None else int(decimals)
    lo, hi = float(y.min()) if y.size else 0.0, float(y.max()) if y.size else 0.0
    quantiles = np.quantile(y, np.arange(1, n_bins) / n_bins) if y.size else []
    # edges rounded as they are displayed, so a class name tells the truth about its members
    edges = sorted({round(float(q), d) for q in quantiles if lo < round(float(q), d) <= hi})
    if not edges:
        raise FmrilmError(
            f"task {name!r}: the training values of {column!r} cannot be cut into 2 or more bins"
        )
    bounds = [lo, *edges, hi]
    suffix = f" {unit}" if unit else ""
    candidates = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        sep = "-" if a >= 0 and b >= 0 else " to "
        candidates.append(f"{format_number(a, d)}{sep}{format_number(b, d)}{suffix}")
    return Task(
        name=name,
        kind="classification",
        column=column,
        level="subject",
        questions=questions or bin_questions(column),
        candidates=tuple(candidates),
        values=tuple(range(len(candidates))),
        unit=unit,
        decimals=d,
        bins=tuple(edges),
        label_from="bins",
    )


def auto_decimals(y: np.ndarray) -> int:
    """0 for integer data, else enough for about two significant digits of the spread (<= 3)."""
    y = np.asarray(y, dtype=float)
    if np.allclose(y, np.round(y)):
        return 0
    sd = float(np.std(y))
    return 0 if sd <= 0 else int(min(3, max(0, 1 - math.floor(math.log10(sd)))))


def nice_grid(lo: float, hi: float, decimals: int, max_points: int = MAX_GRID) -> tuple[float, ...]:
    """Round numbers (steps 1, 2, 5 x 10^k) covering [lo, hi], at most ``max_points`` of them."""
    unit = 10.0**-decimals
    if hi <= lo:
        return (round(lo, decimals),)
    for exponent in range(-decimals, 12):
        for m in (1, 2, 5):
            step = m * 10.0**exponent
            if step < unit - 1e-12:
                continue
            start, stop = math.floor(lo / step), math.ceil(hi / step)
            if stop - start + 1 <= max_points:
                return tuple(round(k * step, decimals) for k in range(start, stop + 1))
    raise AssertionError("unreachable: a step of 10^12 always fits")


# ------------------------------------------------------------------------------------------
# the registry


# name -> builder(cohort, corpus) -> Task; a builder raises FmrilmError when it does not apply
TaskBuilder = Callable[["Cohort", "CorpusView | None"], Task]
BUILTIN_TASKS: dict[str, TaskBuilder] = {}
# what a built-in needs to be offered: a phenotype column, or "corpus" (none: always offered)
_REQUIRES = {
    "sex": "sex",
    "age": "age",
    "age_bin": "age",
    "fluid_intelligence": "fluid_intelligence",
    "diagnosis": "diagnosis",
    "description": "corpus",
    "facts": "corpus",
}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator adding a builder to :data:`BUILTIN_TASKS` under ``name``."""

    def wrap(builder: TaskBuilder) -> TaskBuilder:
        BUILTIN_TASKS[name] = builder
        return builder

    return wrap


def _need_column(cohort: Cohort, name: str, column: str) -> None:
    if column not in cohort.phenotype_columns:
        raise FmrilmError(f"task {name!r} needs a {column!r} phenotype column in {cohort.root}")


def _need_corpus(name: str, corpus: CorpusView | None) -> CorpusView:
    if corpus is None:
        raise FmrilmError(
            f"task {name!r} reads the descriptive corpus: pass corpus=... (built by 'fmrilm corpus build')"
        )
    return corpus


@register_task("sex")
def _sex(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "sex", "sex")
    return classification_task(cohort, "sex", "sex", questions=QUESTIONS["sex"], words=sex_words)


@register_task("age")
def _age(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "age", "age")
    return regression_task(
        cohort, "age", "age", unit="years", decimals=0, questions=QUESTIONS["age"]
    )


@register_task("age_bin")
def _age_bin(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "age_bin", "age")
    return binned_task(
        cohort, "age_bin", "age", unit="years", decimals=0, questions=QUESTIONS["age_bin"]
    )


@register_task("fluid_intelligence")
def _fluid_intelligence(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "fluid_intelligence", "fluid_intelligence")
    return regression_task(
        cohort,
        "fluid_intelligence",
        "fluid_intelligence",
        decimals=1,
        questions=QUESTIONS["fluid_intelligence"],
    )


@register_task("diagnosis")
def _diagnosis(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "diagnosis", "diagnosis")
    return classification_task(cohort, "diagnosis", "diagnosis", questions=QUESTIONS["diagnosis"])


@register_task("task_state")
def _task_state(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return classification_task(
        cohort,
        "task_state",
        "task",
        level="scan",
        questions=QUESTIONS["task_state"],
        words=task_words,
    )


@register_task("site")
def _site(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return classification_task(cohort, "site", "site", questions=QUESTIONS["site"])


@register_task("description")
def _description(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return Task(
        name="description",
        kind="text",
        column=None,
        level="scan",
        questions=QUESTIONS["description"],
        label_from="corpus_text",
        corpus=_need_corpus("description", corpus),
    )


@register_task("facts")
def _facts(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return Task(
        name="facts",
        kind="classification",
        column=None,
        level="scan",
        questions=QUESTIONS["facts"],
        candidates=FACT_CLASSES,
        values=FACT_CLASSES,
        label_from="corpus_fact",
        corpus=_need_corpus("facts", corpus),
    )


def phenotype_task(cohort: Cohort, name: str) -> Task:
    """A task for any phenotype column (``<col>``) or a binned numeric one (``<col>_bin``)."""
    kinds = cohort.meta.get("phenotypes", {})
    if name in kinds:
        if kinds[name] == "numeric":
            return regression_task(cohort, name, name)
        return classification_task(cohort, name, name)
    column = name.removesuffix("_bin")
    if name.endswith("_bin") and kinds.get(column) == "numeric":
        return binned_task(cohort, name, column)
    raise FmrilmError(f"{name!r} is not a phenotype of {cohort.root}")


def available_tasks(cohort: Cohort, corpus: Any = None) -> list[str]:
    """Names :func:`resolve_tasks` accepts for this cohort (whether or not they fit the data)."""
    kinds = cohort.meta.get("phenotypes", {})
    names = []
    for name in BUILTIN_TASKS:
        need = _REQUIRES.get(name)
        if need is None or need in kinds or (need == "corpus" and corpus is not None):
            names.append(name)
    names += [c for c in kinds if c not in names]
    names += [f"{c}_bin" for c, k in kinds.items() if k == "numeric" and f"{c}_bin" not in names]
    return names


def resolve_tasks(
    cohort: Cohort, names: Sequence[str] | None = None, corpus: Any = None
) -> list[Task]:
    """Tasks by name, fitted on the cohort's training split.

    ``names`` may hold built-in names (:data:`BUILTIN_TASKS`), any phenotype column, and
    ``<numeric column>_bin``. ``None`` gives every task that applies: the built-ins whose
    columns exist and that have 2+ training classes, ``description``/``facts`` when a
    ``corpus`` (a :class:`~fmrilm.corpus.build.Corpus` or its folder) is given, and every other
    phenotype column (binned variants only when asked for).
    """
    view = as_corpus_view(corpus)
    if names is None:
        tasks = []
        for name in available_tasks(cohort, view):
            if name.endswith("_bin") and name != "age_bin":
                continue
            try:
                tasks.append(_build(cohort, name, view))
            except FmrilmError:
                continue  # e.g. a single-site cohort has no site task
        return tasks
    if isinstance(names, str):
        names = [names]
    available = available_tasks(cohort, view)
    out = []
    for name in names:
        if name not in available:
            extra = "" if view is not None else " (description and facts need a corpus)"
            raise FmrilmError(
                f"unknown task {name!r} for {cohort.root}; available: {', '.join(available)}{extra}"
            )
        out.append(_build(cohort, name, view))
    return out


def _build(cohort: Cohort, name: str, corpus: CorpusView | None) -> Task:
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name](cohort, corpus)
    return phenotype_task(cohort, name)


__all__ = [
    "BUILTIN_TASKS",
    "MAX_GRID",
    "TaskBuilder",
    "auto_decimals",
    "available_tasks",
    "binned_task",
    "classification_task",
    "nice_grid",
    "phenotype_task",
    "register_task",
    "regression_task",
    "resolve_tasks",
]
