"""Stage 3, multi-task instruction tuning: the task registry and the instruction-data generator.

``tasks`` says what can be asked about a scan (labels, candidate answers, parsing of generated
answers), fitted on the training split; ``prompts`` turns manifest rows into prompts with fMRI
placeholders and target replies. Pure Python / numpy / pandas: tokenisation lives elsewhere.
"""

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
from fmrilm.tasks.registry import (
    BUILTIN_TASKS,
    Task,
    as_corpus_view,
    available_tasks,
    register_task,
    resolve_tasks,
    task_rows,
)

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
