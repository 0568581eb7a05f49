"""Subject-disjoint (optionally site-disjoint) train/val/test splits, stratified and seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_NAMES = ("train", "val", "test")


def assign_splits(
    manifest: pd.DataFrame,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    stratify: str | None = None,
    by: str = "subject",
    only_unassigned: bool = True,
) -> pd.Series:
    """A split name per manifest row, assigned per group (``subject`` or ``site``).

    Every scan of a group gets the same split, so no subject (or site) is in two splits.
    Stratification balances the subject-level ``stratify`` column (categorical, or numeric cut
    into quintiles) across splits. With ``only_unassigned`` existing assignments are kept and
    only new groups are assigned (a new scan of an assigned group joins that group's split):
    re-splitting would move subjects a trained model has seen into the test set.
    """
    if by not in ("subject", "site"):
        raise FmrilmError(f"split unit must be 'subject' or 'site', got {by!r}")
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise FmrilmError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    if manifest.empty:
        raise FmrilmError("cannot split an empty cohort")
    current = (
        manifest["split"].fillna("").astype(str)
        if "split" in manifest
        else pd.Series("", index=manifest.index)
    )
    out = current.copy() if only_unassigned else pd.Series("", index=manifest.index)
    # a new scan of an already-assigned group (another session) joins that group's split
    assigned = out != ""
    known = pd.Series(out[assigned].to_numpy(), index=manifest.loc[assigned, by].to_numpy())
    known = known[~known.index.duplicated()]
    inherit = ~assigned & manifest[by].isin(known.index)
    out.loc[inherit] = manifest.loc[inherit, by].map(known).to_numpy()
    todo = manifest[out == ""]
    if todo.empty:
        return out
    groups = todo.groupby(by, sort=True)
    if stratify is not None:
        if stratify not in manifest.columns:
            raise FmrilmError(f"cannot stratify by {stratify!r}: no such column in the manifest")
        strata = groups[stratify].first()
        if pd.api.types.is_numeric_dtype(strata) and strata.nunique() > 10:
            strata = pd.qcut(strata, q=5, labels=False, duplicates="drop")
        strata = strata.astype(str).fillna("nan")
    else:
        strata = pd.Series("all", index=list(groups.groups))
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, members in sorted(strata.groupby(strata).groups.items()):
        ids = np.array(sorted(members))
        rng.shuffle(ids)
        counts = _allocate(len(ids), fr)
        start = 0
        for name, k in zip(SPLIT_NAMES, counts, strict=True):
            for g in ids[start : start + k]:
                assignment[g] = name
            start += k
    out.loc[todo.index] = todo[by].map(assignment).to_numpy()
    return out


def _allocate(n: int, fractions: np.ndarray) -> list[int]:
    """Integer counts per split summing to n (largest remainder), train first."""
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def check_splits(manifest: pd.DataFrame, *, by: str = "subject") -> None:
    """Refuse leakage: a subject (or, with ``by='site'``, a site) present in two splits."""
    m = manifest[manifest["split"].fillna("") != ""]
    if m.empty:
        return
    bad_names = set(m["split"]) - set(SPLIT_NAMES)
    if bad_names:
        raise FmrilmError(f"unknown split names {sorted(bad_names)}; expected {SPLIT_NAMES}")
    n = m.groupby(by)["split"].nunique()
    leaked = n[n > 1].index.tolist()
    if leaked:
        raise FmrilmError(
            f"split leakage: {len(leaked)} {by}(s) appear in more than one split, e.g. {leaked[:3]}"
        )
