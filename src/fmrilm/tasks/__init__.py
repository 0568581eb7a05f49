"""Stage 3, multi-task instruction tuning: the task registry and the instruction-data generator.

``base`` says what a task is (labels, candidate answers, parsing of generated answers);
``facts`` and ``templates`` hold the corpus facts and the question wording; ``rows`` picks the
manifest rows of a task; ``registry`` builds the tasks, fitted on the training split;
``prompts`` turns manifest rows into prompts with fMRI placeholders and target replies.
Pure Python / numpy / pandas: tokenisation lives elsewhere.
"""

from fmrilm.tasks.base import Task
from fmrilm.tasks.facts import as_corpus_view
from fmrilm.tasks.prompts import (
    InstructionExample,
    build_examples,
    context_line,
    descriptor_line,
    fewshot_exemplars,
    format_answers,
    make_example,
    max_shots,
    parse_answers,
    summary_fields,
)
from fmrilm.tasks.registry import BUILTIN_TASKS, available_tasks, register_task, resolve_tasks
from fmrilm.tasks.rows import task_rows

__all__ = [
    "BUILTIN_TASKS",
    "InstructionExample",
    "Task",
    "as_corpus_view",
    "available_tasks",
    "build_examples",
    "context_line",
    "descriptor_line",
    "fewshot_exemplars",
    "format_answers",
    "make_example",
    "max_shots",
    "parse_answers",
    "summary_fields",
    "register_task",
    "resolve_tasks",
    "task_rows",
]
