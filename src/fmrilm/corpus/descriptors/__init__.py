"""Descriptor families. Each module exposes ``compute(ctx) -> list[Descriptor]``.

``FAMILIES`` maps a family name to its compute function; the order is the order of the record.
Families that need cohort-level statistics fitted on the training split (network FC norms,
dynamic-FC states) read them from ``ctx.norms``.
"""

from __future__ import annotations

from fmrilm.corpus.descriptors import connectivity, dynamics, gradients, graph, spectral, task
from fmrilm.corpus.descriptors.base import DESCRIPTOR_VERSION, Context, Descriptor

__all__ = ["DESCRIPTOR_VERSION", "Context", "Descriptor", "families"]


def families() -> dict:
    """Family name -> compute function (imported lazily)."""
    return {
        "quality": spectral.compute_quality,
        "connectivity": connectivity.compute,
        "graph": graph.compute,
        "gradients": gradients.compute,
        "spectral": spectral.compute,
        "dynamics": dynamics.compute,
        "task": task.compute,
    }
