"""The stage-3 task: what can be asked about a scan, how it is labelled, answered and parsed.

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

Levels (:func:`fmrilm.tasks.rows.task_rows`): ``subject`` tasks (phenotypes, site) use one scan
per subject -- the first resting scan, else the first scan. For every subject with a resting
scan that is the scan :func:`fmrilm.evaluation.baselines.subject_table` picks, so baselines and
the model are scored on the same subjects; a subject without any resting scan is used (its first
scan) but skipped by ``subject_table``. ``scan`` tasks (``task_state``, ``description``,
``facts``) use every labelled scan.

:func:`parse` never guesses: an answer naming no candidate, or more than one, parses to ``None``
(an invalid prediction, counted as wrong and reported as an invalid rate).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError
from fmrilm.tasks.facts import as_corpus_view, describe_descriptor, fact_class, fact_groups

if TYPE_CHECKING:
    from fmrilm.tasks.facts import CorpusView

KINDS = ("classification", "regression", "text")
LEVELS = ("subject", "scan")
# how a task reads its label from a manifest row
LABEL_SOURCES = ("column", "bins", "corpus_text", "corpus_fact")


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
            return None if is_missing(value) else py_value(value)
        if self.label_from == "bins":
            value = row.get(self.column)
            return None if is_missing(value) else self._bin(float(value))
        if self.label_from == "corpus_text":
            texts = self._corpus().texts(row["scan_id"])
            return (
                texts[stable_int(self.seed, row["scan_id"], "text") % len(texts)] if texts else None
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
        h = stable_int(self.seed, row["scan_id"], "fact")
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
            "values": [py_value(v) for v in self.values],
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


def is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and value == ""):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def py_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def stable_int(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


__all__ = [
    "KINDS",
    "LABEL_SOURCES",
    "LEVELS",
    "Task",
    "format_number",
    "is_missing",
    "join_candidates",
    "plain_words",
    "py_value",
    "stable_int",
]
