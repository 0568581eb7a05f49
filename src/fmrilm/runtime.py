"""Device, dtype, bf16 detection, seeding and torch.distributed helpers (the lowest layer)."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch

from fmrilm.errors import FmrilmError


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX).

    The one bf16 check of the package: torch's own CPU capability queries where this torch has
    them, else the kernel's CPU flags.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    if cpu is not None and any(hasattr(cpu, c) for c in checks):
        return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def use_bf16(mode: str, device: str = "cpu") -> bool:
    """Resolve a ``bf16: auto|on|off`` setting for ``device``."""
    if mode == "off":
        return False
    supported = (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if device.startswith("cuda")
        else cpu_has_bf16()
    )
    if mode == "on" and not supported:
        raise FmrilmError(f"bf16=on but {device} has no native bf16 support; use bf16=auto or off")
    return supported


def autocast(enabled: bool, device: str = "cpu"):
    """bf16 autocast on ``device`` when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def seed_step(seed: int, step: int) -> None:
    """Seed torch from (seed, step) so a resumed run draws the same random numbers."""
    torch.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); (rank, world size).

    Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) this is a no-op: (0, 1).
    """
    dist = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # one GPU per process, chosen by torchrun's LOCAL_RANK
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        _OWN_GROUP.append(True)
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun / torch.distributed, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_int(value: int, world: int, device=None) -> int:
    """The sum of ``value`` over the ``world`` processes (``value`` itself in one process)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    torch.distributed.all_reduce(t)
    return int(t.item())


_OWN_GROUP: list[bool] = []  # non-empty while a group made by init_distributed is alive


def finish_distributed() -> None:
    """Wait for every process, then leave the process group init_distributed made (a clean
    exit under torchrun: a process that exits while another still uses the group can abort in
    the backend's threads). A group the caller made is left to the caller."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        if _OWN_GROUP:
            dist.destroy_process_group()
            _OWN_GROUP.clear()


def training_device(requested: str = "auto") -> torch.device:
    """``auto``: this process's GPU (torchrun's LOCAL_RANK) when CUDA is visible, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise FmrilmError("device=cuda but no CUDA GPU is visible; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    raise FmrilmError(f"--device must be auto, cpu or cuda, got {requested!r}")


def shard_frozen_weights(model: torch.nn.Module, layers, keep: set) -> None:
    """FSDP2 (``fully_shard``) over the frozen backbone: every decoder layer, then the root.

    The trainable parameters (``keep``: LoRA adapters, fMRI tables -- a few MB) stay whole on
    every process, so their gradients are all-reduced as without FSDP and checkpoints are
    unchanged; what is sharded is the frozen weights, the memory that grows with the backbone.
    Needs an initialised process group (torchrun).
    """
    from torch.distributed.fsdp import fully_shard  # lazy: only under torchrun --fsdp

    for layer in layers:
        fully_shard(layer, ignored_params=keep)
    fully_shard(model, ignored_params=keep)


@contextlib.contextmanager
def deferred_sigint():
    """Ctrl-C sets a flag instead of raising, so the loop stops between two steps.

    A second Ctrl-C raises at once (the checkpoint may then be up to ckpt_every steps old).
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits = []

    def handler(signum, frame):
        hits.append(1)
        if len(hits) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def matmul_peak_flops(dtype=torch.float32, device: str = "cpu", n: int = 2048, repeats: int = 5):
    """The machine's measured matmul peak: best FLOP/s of an n x n @ n x n ``torch.matmul``.

    The denominator of model FLOP utilisation (MFU) at ``dtype`` -- measured, not a datasheet
    number, so it reflects this machine's cores/GPU and its current clock.
    """
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.matmul(a, b)  # warm up
    sync()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
