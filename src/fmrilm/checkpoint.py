"""Training checkpoints: one safetensors file, written atomically, for exact resume.

A checkpoint holds every tensor of the model (parameters and buffers), the optimizer's state
tensors (``optim.<param index>.<name>``) and, as JSON in the safetensors metadata, the step,
the resolved config, the training history and the versions that wrote it. No pickle: loading
a checkpoint never executes code. The write goes to a temporary file that replaces the old
checkpoint only once complete, so a crash or a full disk leaves the previous one intact.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from fmrilm._version import __version__
from fmrilm.errors import FmrilmError
from fmrilm.io import atomic_path

CHECKPOINT_VERSION = 1


def versions() -> dict[str, str]:

    return {
        "fmrilm": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (e.g. LoRA adapters and new embeddings of a frozen LLM)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor], error: str) -> None:
    """Copy ``state`` into the model's trainable parameters: all of them, same shapes, or
    raise ``FmrilmError(error)`` before changing anything."""
    own = trainable_state(model)
    if set(own) != set(state) or any(own[k].shape != v.shape for k, v in state.items()):
        raise FmrilmError(error)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    trainable_only: bool = False,
) -> None:
    """``trainable_only`` stores the trainable parameters only (the frozen rest is reloaded)."""
    state = trainable_state(model) if trainable_only else model.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t.detach().cpu().contiguous()
    info = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "trainable_only": trainable_only,
        "versions": versions(),
        "param_groups": opt["param_groups"],
        **meta,
    }
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(  # looked up at call time (tests simulate a full disk)
            tensors, str(tmp), metadata={"fmrilm": json.dumps(info, default=str)}
        )


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("fmrilm")
    except (SafetensorError, OSError) as exc:
        raise FmrilmError(f"{path}: not a readable checkpoint ({exc})") from None
    if raw is None:
        raise FmrilmError(f"{path}: not an fmrilm checkpoint")
    info = json.loads(raw)
    if info.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise FmrilmError(
            f"{path}: checkpoint version {info.get('checkpoint_version')} differs from this "
            f"fmrilm's {CHECKPOINT_VERSION}"
        )
    return info


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model and optimizer in place; returns the metadata (step, config, history ...)."""
    info = read_checkpoint_meta(path)
    tensors = load_file(str(path))
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if info.get("trainable_only"):
        load_trainable(model, state, f"{path}: trainable weights do not match the model")
    else:
        load_state_strict(model, state, str(path))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = v
    groups = info["param_groups"]
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise FmrilmError(f"{path}: optimizer state does not match the model ({exc})") from None
    return info


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load every tensor or none: missing, unexpected or mis-shaped tensors are an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise FmrilmError(
            f"{what}: weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise FmrilmError(
                f"{what}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=True)
