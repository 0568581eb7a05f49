"""The simulator's oracle scored on the same test subjects as every other method."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fmrilm.data.cohort import Cohort
from fmrilm.data.simulate import load_truth
from fmrilm.evaluation.metrics import score

ORACLE_COLUMNS = {
    "sex": "oracle_sex",
    "diagnosis": "oracle_diagnosis",
    "age": "oracle_age",
    "fluid_intelligence": "oracle_fluid_intelligence",
}


def oracle_scores(
    cohort: Cohort, label: str, subjects: list[str], *, n_boot: int = 1000
) -> dict[str, Any]:
    """Scores of the Bayes-optimal prediction from the true latent parameters (upper bound)."""
    truth = load_truth(cohort.root).set_index("subject").loc[subjects]
    kind = "regression" if cohort.meta["phenotypes"].get(label) == "numeric" else "classification"
    return {
        "label": label,
        "kind": kind,
        "metrics": score(
            kind, truth[label].to_numpy(), truth[ORACLE_COLUMNS[label]].to_numpy(), n_boot=n_boot
        ),
    }


def task_oracle(cohort: Cohort, rows: pd.DataFrame) -> np.ndarray:
    """Task decoding with the true block designs: a matched filter per candidate task.

    For each scan and each simulated task, regress the series on that task's HRF-convolved
    condition regressors (the known designs) and sum the t-statistics over the regions the
    simulator activates; predict the task with the largest sum. This uses ground truth no method
    has (the designs and the activated regions), so it serves as the upper reference.
    """
    from nilearn.glm.first_level.hemodynamic_models import compute_regressor

    from fmrilm.data.simulate import SimulationConfig, task_events

    config = SimulationConfig()
    preds = []
    for sid in rows["scan_id"]:
        row = cohort.row(sid)
        x = np.asarray(cohort.series(sid), dtype=np.float64)
        n, tr = x.shape[0], float(row["tr"])
        atlas = cohort.atlas(row["atlas"])
        index = {name: i for i, name in enumerate(atlas.names)}
        best, best_score = "", -np.inf
        for task in config.tasks:
            events = task_events(task, n * tr)
            regs, cols = [], []
            for cond, regions in task.conditions.items():
                ev = events[events["trial_type"] == cond]
                exp = np.vstack([ev["onset"], ev["duration"], np.ones(len(ev))])
                regs.append(compute_regressor(exp, "spm", np.arange(n) * tr)[0][:, 0])
                cols.append([index[r] for r in regions if r in index])
            design = np.column_stack([*regs, np.ones(n)])
            beta, *_ = np.linalg.lstsq(design, x, rcond=None)
            resid = x - design @ beta
            dof = max(n - design.shape[1], 1)
            se = np.sqrt(np.diag(np.linalg.pinv(design.T @ design)))[:, None] * np.sqrt(
                (resid**2).sum(0) / dof
            )
            t = beta / se
            s = sum(t[k, c].sum() for k, c in enumerate(cols))
            if s > best_score:
                best, best_score = task.name, s
        preds.append(best)
    return np.array(preds)
