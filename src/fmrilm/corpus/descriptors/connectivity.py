"""Network-level functional connectivity: within- and between-network strength."""

from __future__ import annotations

import itertools

import numpy as np

from fmrilm.corpus.descriptors.base import Context, Descriptor

FAMILY = "connectivity"
_PROV = "mean Fisher-z Pearson correlation over ROI pairs {} (numpy)"


def compute(ctx: Context) -> list[Descriptor]:
    """``fc.mean``, ``fc.within.<Net>`` (networks with >= 2 ROIs), ``fc.between.<A>__<B>``."""
    z = np.arctanh(np.clip(ctx.fc(), -0.999999, 0.999999))  # (n_rois, n_rois)
    iu = np.triu_indices(ctx.n_rois, k=1)
    out = [
        Descriptor("fc.mean", float(z[iu].mean()), "Fisher z", FAMILY, _PROV.format("of all ROIs"))
    ]
    nets = ctx.network_index()
    if not nets:
        out.append(
            Descriptor(
                "fc.note",
                "the atlas has no network labels; network connectivity omitted",
                "",
                FAMILY,
                "",
            )
        )
        return out
    for name, idx in nets.items():
        if len(idx) < 2:
            continue
        block = z[np.ix_(idx, idx)]
        value = block[np.triu_indices(len(idx), k=1)].mean()
        out.append(
            Descriptor(
                f"fc.within.{name}",
                float(value),
                "Fisher z",
                FAMILY,
                _PROV.format(f"within {name}"),
            )
        )
    for (a, ia), (b, ib) in itertools.combinations(nets.items(), 2):
        value = z[np.ix_(ia, ib)].mean()
        out.append(
            Descriptor(
                f"fc.between.{a}__{b}",
                float(value),
                "Fisher z",
                FAMILY,
                _PROV.format(f"between {a} and {b}"),
            )
        )
    return out
