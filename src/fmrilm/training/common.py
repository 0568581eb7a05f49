"""What every training loop shares: the LR schedule, the resume guard, the start of a run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fmrilm.config import to_dict
from fmrilm.errors import FmrilmError
from fmrilm.runtime import init_distributed, training_device

# settings that may differ between a checkpoint and the run that resumes it
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "ckpt_every"})


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The one LR schedule: linear warm-up over ``warmup`` steps, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _differing(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in set(ignore))


def check_resume(
    out: str | Path,
    meta: dict[str, Any],
    config: Any,
    inputs: dict[str, Any] | None = None,
    *,
    inputs_hint: str = "other inputs",
    advice: str = "resume with the same tokenizer, cohort and corpus or choose another --out",
) -> None:
    """The one resume guard: refuse a checkpoint made with other settings or other inputs.

    ``meta``: the checkpoint's metadata (its ``config`` and ``inputs``); ``config``: the
    resuming run's dataclass config (only :data:`RESUMABLE_CHANGES` may differ; None: not
    compared); ``inputs``:
    identities of the training data (cohort, split, tokenizer, corpus).
    """
    if inputs is not None:
        diff = _differing(meta.get("inputs", {}), inputs)
        if diff:
            raise FmrilmError(
                f"{out}: its checkpoint was trained on {inputs_hint} ({', '.join(diff)}); {advice}"
            )
    diff = []
    if config is not None:
        diff = _differing(meta.get("config", {}), to_dict(config), RESUMABLE_CHANGES)
    if diff:
        raise FmrilmError(
            f"{out}: its checkpoint was trained with other settings ({', '.join(diff[:5])}); "
            "use the same config to resume or another --out"
        )


def start_run(config, out, device: str, log: Callable[[str], None]):
    """Common start of a stage-2/3 training command: validated config, a free ``out``,
    torchrun's process group, the device; only rank 0 logs.

    Returns (out, t0, rank, world, device, log).
    """
    config.validate()
    out = Path(out)
    if (out / "config.json").exists():
        raise FmrilmError(f"{out} already holds a model; choose another --out")
    t0 = time.perf_counter()
    rank, world = init_distributed()
    dev = training_device(device)
    if rank != 0:
        log = lambda line: None  # noqa: E731 -- only rank 0 reports
    return out, t0, rank, world, dev, log
