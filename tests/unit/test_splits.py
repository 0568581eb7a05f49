"""Train/val/test splits: disjoint by subject (or site), stratified, seeded, stable on append."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmrilm.data.splits import assign_splits, check_splits
from fmrilm.errors import FmrilmError


def manifest(
    n_subjects: int = 100, scans_per_subject: int = 3, n_sites: int = 10, seed: int = 0
) -> pd.DataFrame:
    """Several scans per subject, subjects nested in sites, a binary label with 30% positives."""
    rng = np.random.default_rng(seed)
    subjects = [f"{i:04d}" for i in range(n_subjects)]
    positive = set(rng.choice(subjects, size=int(0.3 * n_subjects), replace=False))
    rows = [
        {
            "scan_id": f"sub-{s}_task-t{k}",
            "subject": s,
            "site": f"site{int(s) % n_sites}",
            "dx": "patient" if s in positive else "control",
            "age": 20.0 + int(s) % 50,
            "split": "",
        }
        for s in subjects
        for k in range(scans_per_subject)
    ]
    return pd.DataFrame(rows)


def groups_per_split(m: pd.DataFrame, splits: pd.Series, by: str) -> pd.Series:
    return m.assign(split=splits).groupby("split")[by].nunique()


def test_subject_disjoint_with_exact_fractions():
    m = manifest()
    splits = assign_splits(m, fractions=(0.7, 0.1, 0.2), seed=3)
    assert splits.index.equals(m.index)
    assert set(splits) == {"train", "val", "test"}
    assert (m.assign(split=splits).groupby("subject")["split"].nunique() == 1).all()
    assert groups_per_split(m, splits, "subject").to_dict() == {"train": 70, "val": 10, "test": 20}
    check_splits(m.assign(split=splits))  # passes its own leakage check


def test_counts_use_largest_remainder():
    m = manifest(n_subjects=7, scans_per_subject=1)
    splits = assign_splits(m, fractions=(0.5, 0.25, 0.25), seed=0)
    # 3.5, 1.75, 1.75 -> floors 3, 1, 1; the two largest remainders (0.75, 0.75) get the spare 2
    assert splits.value_counts().to_dict() == {"train": 3, "val": 2, "test": 2}
    assert assign_splits(m, fractions=(1.0, 0.0, 0.0)).eq("train").all()


def test_site_disjoint():
    m = manifest(n_subjects=200, n_sites=10)
    splits = assign_splits(m, fractions=(0.6, 0.2, 0.2), seed=1, by="site")
    done = m.assign(split=splits)
    assert (done.groupby("site")["split"].nunique() == 1).all()
    assert (done.groupby("subject")["split"].nunique() == 1).all()  # subjects nest in sites
    assert groups_per_split(m, splits, "site").to_dict() == {"train": 6, "val": 2, "test": 2}
    check_splits(done, by="site")
    # splitting by subject instead puts most sites in several splits
    by_subject = m.assign(split=assign_splits(m, seed=1))
    with pytest.raises(FmrilmError, match=r"split leakage: \d+ site\(s\)"):
        check_splits(by_subject, by="site")


def test_stratification_balances_a_binary_label():
    m = manifest(n_subjects=200)
    subjects = m.drop_duplicates("subject")
    overall = (subjects["dx"] == "patient").mean()
    assert overall == pytest.approx(0.3)
    for seed in range(5):
        splits = assign_splits(m, seed=seed, stratify="dx")
        per_subject = m.assign(split=splits).drop_duplicates("subject")
        rate = per_subject.groupby("split")["dx"].apply(lambda d: (d == "patient").mean())
        # 60 patients / 140 controls cut 70/10/20 in each stratum: 42+98, 6+14, 12+28
        np.testing.assert_allclose(rate.to_numpy(), overall, atol=0.02)
        counts = per_subject.groupby("split").size().to_dict()
        assert counts == {"train": 140, "val": 20, "test": 40}


def test_stratification_on_a_numeric_label_uses_quintiles():
    m = manifest(n_subjects=200)
    splits = assign_splits(m, seed=0, stratify="age")
    per_subject = m.assign(split=splits).drop_duplicates("subject")
    means = per_subject.groupby("split")["age"].mean()
    assert (means - per_subject["age"].mean()).abs().max() < 2.5  # ages span 20..69


def test_seeded_determinism():
    m = manifest()
    a = assign_splits(m, seed=7, stratify="dx")
    b = assign_splits(m.copy(), seed=7, stratify="dx")
    pd.testing.assert_series_equal(a, b)
    c = assign_splits(m, seed=8, stratify="dx")
    assert (a != c).any()
    # row order does not matter: the same subject gets the same split
    shuffled = m.sample(frac=1.0, random_state=0)
    d = assign_splits(shuffled, seed=7, stratify="dx")
    pd.testing.assert_series_equal(d.sort_index(), a)


def test_only_unassigned_keeps_existing_assignments():
    m = manifest(n_subjects=100)
    m["split"] = assign_splits(m, seed=0)
    new = manifest(n_subjects=150).iloc[300:]  # 50 new subjects
    grown = pd.concat([m, new], ignore_index=True)
    kept = assign_splits(grown, seed=99)
    pd.testing.assert_series_equal(kept.iloc[:300], m["split"], check_names=False)
    assert (kept.iloc[300:] != "").all()
    assert groups_per_split(new, kept.iloc[300:], "subject").to_dict() == {
        "train": 35,
        "val": 5,
        "test": 10,
    }
    # reassigning everything ignores the stored splits
    redone = assign_splits(grown, seed=99, only_unassigned=False)
    assert (redone.iloc[:300] != m["split"]).any()
    # nothing unassigned: the input comes back unchanged
    pd.testing.assert_series_equal(assign_splits(m, seed=5), m["split"], check_names=False)


def test_new_scan_of_an_assigned_subject_joins_its_split():
    # regression: a second session of a subject already in 'train' was assigned at random, so
    # Cohort.set_splits then refused the result as leakage
    m = manifest(n_subjects=50, scans_per_subject=1)
    m["split"] = assign_splits(m, seed=0)
    sessions = m.assign(scan_id=m["scan_id"] + "_ses2", split="")
    grown = pd.concat([m, sessions], ignore_index=True)
    for seed in range(5):
        splits = assign_splits(grown, seed=seed)
        np.testing.assert_array_equal(splits.iloc[50:].to_numpy(), m["split"].to_numpy())
        check_splits(grown.assign(split=splits))


@pytest.mark.parametrize(
    "fractions",
    [(0.7, 0.2, 0.2), (0.8, 0.3, -0.1), (0.5, 0.5), (0.6, 0.2, 0.1, 0.1), (np.nan, 0.5, 0.5)],
)
def test_bad_fractions_raise(fractions):
    with pytest.raises(
        FmrilmError, match="split fractions must be three non-negative numbers summing to 1"
    ):
        assign_splits(manifest(n_subjects=10), fractions=fractions)


def test_bad_arguments_raise():
    m = manifest(n_subjects=10)
    with pytest.raises(FmrilmError, match="split unit must be 'subject' or 'site', got 'scan'"):
        assign_splits(m, by="scan")
    with pytest.raises(FmrilmError, match="cannot stratify by 'iq': no such column"):
        assign_splits(m, stratify="iq")
    with pytest.raises(FmrilmError, match="cannot split an empty cohort"):
        assign_splits(m.iloc[:0])


def test_check_splits_refuses_leakage_and_unknown_names():
    m = manifest(n_subjects=4, scans_per_subject=2)
    m["split"] = ["train"] * 4 + ["test"] * 4
    check_splits(m)
    m.loc[0, "split"] = "test"  # subject 0000 now in train and test
    with pytest.raises(FmrilmError, match=r"split leakage: 1 subject\(s\) .* \['0000'\]"):
        check_splits(m)
    m["split"] = ["train"] * 4 + ["holdout"] * 4
    with pytest.raises(FmrilmError, match=r"unknown split names \['holdout'\]"):
        check_splits(m)
    m["split"] = ""  # unassigned scans are not leakage
    check_splits(m)
