"""Training loops: stage 1 (the tokenizer), stages 2 and 3 (one loop), their shared schedule,
resume guard and samplers."""

from fmrilm.training.common import check_resume, lr_factor, start_run
from fmrilm.training.instruct import instruct_sampler
from fmrilm.training.joint import sample_step, train_joint, training_inputs

__all__ = [
    "check_resume",
    "instruct_sampler",
    "lr_factor",
    "sample_step",
    "start_run",
    "train_joint",
    "training_inputs",
]
