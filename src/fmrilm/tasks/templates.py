"""Question wording of the stage-3 tasks: the built-ins' phrasings, the phrasings of any
phenotype column, and readable answer words for raw manifest values.

A phrasing may hold ``{candidates}`` (the task's answers, "a, b or c") and ``{descriptor}`` (the
descriptor a ``facts`` question names); :meth:`fmrilm.tasks.base.Task.question` fills them in.
"""

from __future__ import annotations

from typing import Any

from fmrilm.tasks.base import plain_words

# readable answer words for raw manifest values
_SEX_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}
_TASK_WORDS = {"workingmemory": "working memory", "wm": "working memory", "rest": "rest"}

QUESTIONS: dict[str, tuple[str, ...]] = {
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


def categorical_questions(col: str) -> tuple[str, ...]:
    words = plain_words(col)
    return (
        f"What is the {words} of this participant: {{candidates}}?",
        f"Which {words} does this participant have: {{candidates}}?",
        f"Based on this scan, what is the participant's {words}: {{candidates}}?",
    )


def numeric_questions(col: str, unit: str) -> tuple[str, ...]:
    words, in_unit = plain_words(col), f" in {unit}" if unit else ""
    return (
        f"Estimate this participant's {words}{in_unit}.",
        f"What is the {words} of this participant{in_unit}?",
        f"Predict the participant's {words}{in_unit}.",
    )


def bin_questions(col: str) -> tuple[str, ...]:
    words = plain_words(col)
    return (
        f"Which {words} range fits this participant: {{candidates}}?",
        f"Is the participant's {words} {{candidates}}?",
    )


def sex_words(v: Any) -> str:
    return _SEX_WORDS.get(str(v).strip().lower(), plain_words(v))


def task_words(v: Any) -> str:
    return _TASK_WORDS.get(str(v).strip().lower(), plain_words(v))


__all__ = [
    "QUESTIONS",
    "bin_questions",
    "categorical_questions",
    "numeric_questions",
    "sex_words",
    "task_words",
]
