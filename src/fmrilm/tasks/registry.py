"""Stage-3 task registry: what can be asked about a scan, how it is labelled, answered and parsed.

A :class:`Task` is one question type of instruction tuning. Its label comes from a manifest
column (a phenotype, ``task``, ``site``), from binning a numeric column, or from the descriptive
corpus (a description text, a qualitative descriptor fact). Every fitted part of a task -- the
candidate classes, the bin edges, the regression grid -- is computed on the **training split
only**, so a value seen only in the test split is never offered as an answer.

Kinds and what the model-side code gets::

    classification  answer = one of ``candidates`` (fixed order; ``values[i]`` is its raw label)
    regression      answer = the number formatted with ``decimals``; ``grid`` lists candidate
                    numbers (<= 41, spanning the training range) for constrained scoring
    text            answer = free text (a corpus description); no candidates

Levels: ``subject`` tasks (phenotypes, site) use one scan per subject -- the first resting scan,
else the first scan. For every subject with a resting scan that is the scan
:func:`fmrilm.evaluation.baselines.subject_table` picks, so baselines and the model are scored on
the same subjects; a subject without any resting scan is used here (its first scan) but skipped
by ``subject_table``. ``scan`` tasks (``task_state``, ``description``, ``facts``) use every
labelled scan.

:func:`parse` never guesses: an answer naming no candidate, or more than one, parses to ``None``
(an invalid prediction, counted as wrong and reported as an invalid rate).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.corpus.text import THRESHOLDS, fmt_z
from fmrilm.data.cohort import SPLITS, Cohort
from fmrilm.errors import FmrilmError

KINDS = ("classification", "regression", "text")
LEVELS = ("subject", "scan")
# how a task reads its label from a manifest row
LABEL_SOURCES = ("column", "bins", "corpus_text", "corpus_fact")
MAX_GRID = 41
FACT_CLASSES = ("increased", "typical", "reduced")
# a fact is "typical" below this |z| (as displayed, one decimal): the descriptions' words
# "slightly increased/reduced" and "typical" all count as typical, "increased" and "markedly
# increased" as increased (fmrilm.corpus.text.qualify)
FACT_Z = THRESHOLDS[1]
REST_TASK = "rest"  # the manifest ``task`` value of resting scans (as in baselines.subject_table)

# readable answer words for raw manifest values
_SEX_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}
_TASK_WORDS = {"workingmemory": "working memory", "wm": "working memory", "rest": "rest"}


# ------------------------------------------------------------------------------------------
# the task


@dataclass(frozen=True)
class Task:
    """One question type of instruction tuning (see the module docstring).

    ``bins`` are the interior edges of a binned numeric column: class ``i`` holds values with
    ``bins[i-1] <= x < bins[i]``, and its raw label is the integer ``i``. ``seed`` fixes the
    per-scan choices of corpus tasks (which description variant, which descriptor a fact
    question names). ``corpus`` is the corpus those tasks read; it is not part of the task's
    identity (not compared, not serialised).
    """

    name: str
    kind: str
    column: str | None
    level: str
    questions: tuple[str, ...]
    candidates: tuple[str, ...] = ()
    values: tuple = ()
    unit: str = ""
    decimals: int = 0
    grid: tuple[float, ...] = ()
    bins: tuple[float, ...] = ()
    label_from: str = "column"
    seed: int = 0
    corpus: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FmrilmError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.level not in LEVELS:
            raise FmrilmError(
                f"task {self.name!r}: level must be one of {LEVELS}, got {self.level!r}"
            )
        if self.label_from not in LABEL_SOURCES:
            raise FmrilmError(
                f"task {self.name!r}: label_from must be one of {LABEL_SOURCES}, got {self.label_from!r}"
            )
        if not self.questions:
            raise FmrilmError(f"task {self.name!r}: needs at least one question phrasing")
        if self.kind == "classification":
            if len(self.candidates) != len(self.values):
                raise FmrilmError(
                    f"task {self.name!r}: {len(self.candidates)} candidates but {len(self.values)} values"
                )
            if len(self.candidates) < 2:
                raise FmrilmError(
                    f"task {self.name!r}: a classification task needs at least 2 classes, "
                    f"got {list(self.candidates)}"
                )
            lowered = [c.lower() for c in self.candidates]
            if len(set(lowered)) != len(lowered):
                raise FmrilmError(
                    f"task {self.name!r}: candidate answers must differ, got {list(self.candidates)}"
                )
        if self.kind == "regression" and not self.grid:
            raise FmrilmError(f"task {self.name!r}: a regression task needs a grid")
        if self.label_from in ("column", "bins") and not self.column:
            raise FmrilmError(f"task {self.name!r}: labels from a column need column=...")

    # -- labels ----------------------------------------------------------------------------
    def label(self, row: pd.Series) -> Any:
        """Raw label of one manifest row, or None when the row is unlabelled for this task."""
        if self.label_from == "column":
            value = row.get(self.column)
            return None if _missing(value) else _py(value)
        if self.label_from == "bins":
            value = row.get(self.column)
            return None if _missing(value) else self._bin(float(value))
        if self.label_from == "corpus_text":
            texts = self._corpus().texts(row["scan_id"])
            return (
                texts[_stable_int(self.seed, row["scan_id"], "text") % len(texts)]
                if texts
                else None
            )
        name = self.descriptor(row)
        if name is None:
            return None
        return fact_class(self._corpus().facts(row["scan_id"])[name])

    def _bin(self, x: float) -> int:
        return int(np.searchsorted(np.asarray(self.bins), x, side="right"))

    def descriptor(self, row: pd.Series) -> str | None:
        """The descriptor a ``facts`` question asks about for this scan (deterministic in seed)."""
        if self.label_from != "corpus_fact":
            return None
        groups = fact_groups(list(self._corpus().facts(row["scan_id"])))
        if not groups:
            return None
        # two stages, so the 21 network pairs do not crowd out the whole-brain descriptors
        h = _stable_int(self.seed, row["scan_id"], "fact")
        keys = sorted(groups)
        members = groups[keys[h % len(keys)]]
        return members[(h // len(keys)) % len(members)]

    def _corpus(self) -> CorpusView:
        if self.corpus is None:
            raise FmrilmError(
                f"task {self.name!r} reads the descriptive corpus: pass corpus=... (a corpus folder "
                "built by 'fmrilm corpus build')"
            )
        return self.corpus

    # -- text ------------------------------------------------------------------------------
    def question(self, row: pd.Series | None = None, rng: np.random.Generator | None = None) -> str:
        """One phrasing of the question (``rng`` picks it; None: the first), filled in for ``row``."""
        template = self.questions[0 if rng is None else int(rng.integers(len(self.questions)))]
        fields = {"candidates": join_candidates(self.candidates)}
        if "{descriptor}" in template:
            name = None if row is None else self.descriptor(row)
            if name is None:
                raise FmrilmError(f"task {self.name!r}: this scan has no descriptor to ask about")
            fields["descriptor"] = describe_descriptor(name)
        return template.format(**fields)

    def answer(self, raw: Any) -> str:
        """The target reply for a raw label: its candidate, or the number with ``decimals``."""
        if self.kind == "regression":
            return format_number(float(raw), self.decimals)
        if self.kind == "text":
            return str(raw)
        for value, candidate in zip(self.values, self.candidates, strict=True):
            if value == raw:
                return candidate
        # a class absent from training (e.g. only in test): readable, but never a candidate
        return plain_words(raw)

    def parse(self, text: str | None) -> Any:
        """Raw label of a free-generated answer, or None when it is not exactly one answer."""
        if text is None:
            return None
        if self.kind == "text":
            return text.strip() or None
        if self.kind == "regression":
            match = _NUMBER.search(text)
            return float(match.group()) if match else None
        found = _candidates_in(text, self.candidates)
        return self.values[found[0]] if len(found) == 1 else None

    def candidate_texts(self) -> tuple[str, ...]:
        """Answers for constrained scoring: classes, or the grid numbers as answers are written."""
        if self.kind == "classification":
            return self.candidates
        if self.kind == "regression":
            return tuple(format_number(g, self.decimals) for g in self.grid)
        return ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (without the corpus): enough to rebuild answers and parse."""
        return {
            "name": self.name,
            "kind": self.kind,
            "column": self.column,
            "level": self.level,
            "questions": list(self.questions),
            "candidates": list(self.candidates),
            "values": [_py(v) for v in self.values],
            "unit": self.unit,
            "decimals": self.decimals,
            "grid": [float(g) for g in self.grid],
            "bins": [float(b) for b in self.bins],
            "label_from": self.label_from,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], corpus: Any = None) -> Task:
        return cls(
            name=d["name"],
            kind=d["kind"],
            column=d["column"],
            level=d["level"],
            questions=tuple(d["questions"]),
            candidates=tuple(d["candidates"]),
            values=tuple(d["values"]),
            unit=d.get("unit", ""),
            decimals=int(d.get("decimals", 0)),
            grid=tuple(d.get("grid", ())),
            bins=tuple(d.get("bins", ())),
            label_from=d.get("label_from", "column"),
            seed=int(d.get("seed", 0)),
            corpus=None if corpus is None else as_corpus_view(corpus),
        )


# ------------------------------------------------------------------------------------------
# formatting and parsing helpers

# a number not glued to a word or another number ("age-53" reads 53, "-4.5" reads -4.5)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?")


def join_candidates(candidates: Sequence[str]) -> str:
    """'a or b', 'a, b or c' (empty string for no candidates)."""
    c = list(candidates)
    if len(c) <= 1:
        return "".join(c)
    return ", ".join(c[:-1]) + " or " + c[-1]


def format_number(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    return s.lstrip("-") if float(s) == 0 else s  # no "-0"


def plain_words(value: Any) -> str:
    return str(value).replace("_", " ")


def _candidates_in(text: str, candidates: Sequence[str]) -> list[int]:
    """Indices of the candidates that occur in ``text`` as whole words (case-insensitive).

    Longer candidates are matched first and their spans masked, so a candidate inside a longer
    one ("memory" in "working memory") is not counted twice.
    """
    low = text.lower()
    found = []
    for i in sorted(range(len(candidates)), key=lambda i: -len(candidates[i])):
        rx = re.compile(r"(?<![\w-])" + re.escape(candidates[i].lower()) + r"(?![\w-])")
        hit = False
        for m in rx.finditer(low):
            hit = True
            low = low[: m.start()] + "\0" * (m.end() - m.start()) + low[m.end() :]
        if hit:
            found.append(i)
    return sorted(found)


def _missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and value == ""):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _stable_int(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------
# descriptor facts

_FACT_PHRASES = {
    "fc.mean": "overall functional connectivity",
    "graph.global_efficiency": "global efficiency of the connectivity graph",
    "graph.modularity": "modularity of the connectivity graph",
    "graph.clustering": "clustering of the connectivity graph",
    "graph.mean_strength": "mean connectivity strength of the regions",
    "gradients.explained": "the variance explained by the principal connectivity gradient",
    "spectral.falff_mean": "low-frequency fluctuation amplitude (fALFF) across the brain",
    "spectral.timescale_s": "the intrinsic timescale of the signals",
    "spectral.global_signal_sd": "global signal amplitude",
    "spectral.peak_frequency": "the peak frequency of the signals",
    "dynamics.fc_variability": "connectivity variability across sliding windows",
    "quality.fd_mean": "head motion",
    "quality.tsnr": "temporal signal-to-noise ratio",
}
_FACT_PREFIXES = {
    "fc.within.": "within-network connectivity of the {0} network",
    "fc.between.": "connectivity between the {0} and {1} networks",
    "spectral.falff.": "low-frequency fluctuation amplitude (fALFF) in the {0} network",
    "spectral.alff.": "low-frequency amplitude (ALFF) in the {0} network",
}


def describe_descriptor(name: str) -> str:
    """Noun phrase for a descriptor name ('fc.within.Default' -> 'within-network ... Default ...')."""
    if name in _FACT_PHRASES:
        return _FACT_PHRASES[name]
    for prefix, phrase in _FACT_PREFIXES.items():
        if name.startswith(prefix):
            return phrase.format(*name[len(prefix) :].split("__"))
    raise KeyError(name)


def askable_facts(record: dict[str, Any]) -> dict[str, float]:
    """Descriptor name -> z of the descriptors a ``facts`` question may name.

    Askable: a scalar value, a z-score against the training norms, and a phrase to name it.
    """
    out = {}
    for name, d in record.items():
        value, z = d.get("value"), d.get("z")
        if z is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name in _FACT_PHRASES or any(name.startswith(p) for p in _FACT_PREFIXES):
            out[sys.intern(name)] = float(z)
    return out


def fact_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Descriptor names grouped (each network family is one group), names sorted."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        prefix = next((p for p in _FACT_PREFIXES if name.startswith(p)), name)
        groups.setdefault(prefix, []).append(name)
    return groups


def fact_class(z: float) -> str:
    """'increased' / 'typical' / 'reduced' from a z-score as the descriptions display it."""
    shown = float(fmt_z(z))  # z = 0.96 shows as +1.0 and reads "increased" in the texts
    if abs(shown) < FACT_Z:
        return "typical"
    return "increased" if shown > 0 else "reduced"


class CorpusView:
    """Fast per-scan access to a corpus: an index by scan id, and the askable facts of each scan
    kept (compactly) on first use.

    Wraps :class:`fmrilm.corpus.build.Corpus` (or anything with ``record(scan_id)`` and
    ``texts(scan_id)``). A scan missing from the corpus, or skipped by it, has no texts and no
    facts: it is unlabelled for the corpus tasks.
    """

    def __init__(self, corpus: Any):
        self.corpus = corpus
        self._facts: dict[str, dict[str, float]] = {}
        table = getattr(corpus, "table", None)
        self._rows = (
            {sid: i for i, sid in enumerate(table["scan_id"])}
            if isinstance(table, pd.DataFrame) and "scan_id" in table
            else None
        )

    def record(self, scan_id: str) -> dict[str, Any]:
        """The full descriptor record ({} when the scan is missing or was skipped)."""
        if self._rows is not None:
            i = self._rows.get(scan_id)
            return {} if i is None else json.loads(self.corpus.table["record"].iat[i] or "{}")
        try:
            return dict(self.corpus.record(scan_id))
        except FmrilmError:
            return {}

    def facts(self, scan_id: str) -> dict[str, float]:
        """Descriptor name -> z of the scan's askable descriptors (:func:`askable_facts`)."""
        if scan_id not in self._facts:
            self._facts[scan_id] = askable_facts(self.record(scan_id))
        return self._facts[scan_id]

    def texts(self, scan_id: str) -> list[str]:
        if self._rows is not None:
            i = self._rows.get(scan_id)
            return [] if i is None else list(self.corpus.table["texts"].iat[i])
        try:
            return list(self.corpus.texts(scan_id))
        except FmrilmError:
            return []


def as_corpus_view(corpus: Any) -> CorpusView | None:
    """A :class:`CorpusView` of a corpus, a corpus folder, or None."""
    if corpus is None or isinstance(corpus, CorpusView):
        return corpus
    if isinstance(corpus, str) or hasattr(corpus, "__fspath__"):
        from fmrilm.corpus.build import Corpus

        corpus = Corpus(corpus)
    return CorpusView(corpus)


# ------------------------------------------------------------------------------------------
# rows of a task


def task_rows(cohort: Cohort, task: Task, split: str) -> pd.DataFrame:
    """Manifest rows a task is trained or evaluated on in ``split`` (labelled rows only).

    Subject-level tasks: one scan per subject, the first resting scan else the first scan (in
    manifest order). Scan-level tasks: every labelled scan.
    """
    if split not in SPLITS:
        raise FmrilmError(f"split must be one of {SPLITS}, got {split!r}")
    m = cohort.manifest
    rows = m[m["split"] == split]
    if task.label_from in ("column", "bins"):
        if task.column not in rows.columns:
            raise FmrilmError(f"task {task.name!r}: the manifest has no column {task.column!r}")
        labelled = ~rows[task.column].map(_missing).astype(bool)
    elif rows.empty:
        labelled = pd.Series(False, index=rows.index)
    else:
        labelled = rows.apply(lambda r: task.label(r) is not None, axis=1).astype(bool)
    rows = rows[labelled]
    if task.level == "subject":
        rows = one_scan_per_subject(rows)
    if rows.empty:
        raise FmrilmError(f"task {task.name!r}: no labelled scans in the {split!r} split")
    return rows


def one_scan_per_subject(rows: pd.DataFrame) -> pd.DataFrame:
    """The first resting scan of each subject, else its first scan; manifest order kept."""
    rest = rows[rows["task"] == REST_TASK].drop_duplicates("subject")
    other = rows[~rows["subject"].isin(rest["subject"])].drop_duplicates("subject")
    return pd.concat([rest, other]).sort_index()


# ------------------------------------------------------------------------------------------
# builders (fitted on the training split)

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "sex": (
        "What is the sex of this participant: {candidates}?",
        "Is this scan from a {candidates} participant?",
        "Based on this scan, is the participant {candidates}?",
    ),
    "age": (
        "How old is this participant, in years?",
        "Estimate the participant's age in years.",
        "What is the age of the person scanned (years)?",
    ),
    "age_bin": (
        "Which age range does this participant fall in: {candidates}?",
        "Is the participant's age {candidates}?",
        "Pick the participant's age group: {candidates}.",
    ),
    "fluid_intelligence": (
        "Estimate this participant's fluid intelligence score.",
        "What fluid intelligence score would you predict for this participant?",
        "How does this participant score on fluid intelligence?",
    ),
    "diagnosis": (
        "Which diagnostic group does this participant belong to: {candidates}?",
        "What is the participant's diagnosis: {candidates}?",
        "Based on this scan, is the participant {candidates}?",
    ),
    "task_state": (
        "What was the participant doing during this scan: {candidates}?",
        "Which condition was this scan acquired in: {candidates}?",
        "Identify the scan's condition: {candidates}.",
    ),
    "site": (
        "At which site was this scan acquired: {candidates}?",
        "Which scanning site does this scan come from: {candidates}?",
    ),
    "description": (
        "Describe this scan.",
        "Summarise the functional organisation of this scan.",
        "What does this fMRI scan show?",
    ),
    "facts": (
        "Compared with the training norm, is {descriptor} {candidates}?",
        "In this scan, is {descriptor} {candidates} relative to the cohort norms?",
        "Relative to the norms of the training scans, is {descriptor} {candidates}?",
    ),
}


def _categorical_questions(col: str) -> tuple[str, ...]:
    words = plain_words(col)
    return (
        f"What is the {words} of this participant: {{candidates}}?",
        f"Which {words} does this participant have: {{candidates}}?",
        f"Based on this scan, what is the participant's {words}: {{candidates}}?",
    )


def _numeric_questions(col: str, unit: str) -> tuple[str, ...]:
    words, in_unit = plain_words(col), f" in {unit}" if unit else ""
    return (
        f"Estimate this participant's {words}{in_unit}.",
        f"What is the {words} of this participant{in_unit}?",
        f"Predict the participant's {words}{in_unit}.",
    )


def _bin_questions(col: str) -> tuple[str, ...]:
    words = plain_words(col)
    return (
        f"Which {words} range fits this participant: {{candidates}}?",
        f"Is the participant's {words} {{candidates}}?",
    )


def _training_labels(cohort: Cohort, name: str, column: str, level: str) -> pd.Series:
    """Labels of ``column`` on the rows a task of ``level`` trains on (training split)."""
    probe = Task(name, "text", column, level, ("?",))
    return task_rows(cohort, probe, "train")[column]


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
    values = sorted({_py(v) for v in _training_labels(cohort, name, column, level)}, key=str)
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
        questions=questions or _categorical_questions(column),
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
    y = pd.to_numeric(_training_labels(cohort, name, column, "subject"), errors="coerce").dropna()
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
        questions=questions or _numeric_questions(column, unit),
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
    y = pd.to_numeric(_training_labels(cohort, name, column, "subject"), errors="coerce").dropna()
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
        questions=questions or _bin_questions(column),
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


def _sex_words(v: Any) -> str:
    return _SEX_WORDS.get(str(v).strip().lower(), plain_words(v))


def _task_words(v: Any) -> str:
    return _TASK_WORDS.get(str(v).strip().lower(), plain_words(v))


# name -> builder(cohort, corpus) -> Task; a builder raises FmrilmError when it does not apply
TaskBuilder = Callable[[Cohort, "CorpusView | None"], Task]
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
    return classification_task(cohort, "sex", "sex", questions=_QUESTIONS["sex"], words=_sex_words)


@register_task("age")
def _age(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "age", "age")
    return regression_task(
        cohort, "age", "age", unit="years", decimals=0, questions=_QUESTIONS["age"]
    )


@register_task("age_bin")
def _age_bin(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "age_bin", "age")
    return binned_task(
        cohort, "age_bin", "age", unit="years", decimals=0, questions=_QUESTIONS["age_bin"]
    )


@register_task("fluid_intelligence")
def _fluid_intelligence(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "fluid_intelligence", "fluid_intelligence")
    return regression_task(
        cohort,
        "fluid_intelligence",
        "fluid_intelligence",
        decimals=1,
        questions=_QUESTIONS["fluid_intelligence"],
    )


@register_task("diagnosis")
def _diagnosis(cohort: Cohort, corpus: CorpusView | None) -> Task:
    _need_column(cohort, "diagnosis", "diagnosis")
    return classification_task(cohort, "diagnosis", "diagnosis", questions=_QUESTIONS["diagnosis"])


@register_task("task_state")
def _task_state(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return classification_task(
        cohort,
        "task_state",
        "task",
        level="scan",
        questions=_QUESTIONS["task_state"],
        words=_task_words,
    )


@register_task("site")
def _site(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return classification_task(cohort, "site", "site", questions=_QUESTIONS["site"])


@register_task("description")
def _description(cohort: Cohort, corpus: CorpusView | None) -> Task:
    return Task(
        name="description",
        kind="text",
        column=None,
        level="scan",
        questions=_QUESTIONS["description"],
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
        questions=_QUESTIONS["facts"],
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
    "FACT_CLASSES",
    "CorpusView",
    "Task",
    "as_corpus_view",
    "available_tasks",
    "binned_task",
    "classification_task",
    "describe_descriptor",
    "askable_facts",
    "fact_class",
    "fact_groups",
    "format_number",
    "join_candidates",
    "nice_grid",
    "one_scan_per_subject",
    "phenotype_task",
    "register_task",
    "regression_task",
    "resolve_tasks",
    "task_rows",
]
