"""Task responses per network from the events table (HRF-convolved regression).

For each network, its mean signal is regressed on one regressor per condition -- the events of
that ``trial_type`` as boxcars convolved with the SPM canonical HRF
(``nilearn.glm.first_level.hemodynamic_models.compute_regressor``) -- plus an intercept and a
linear drift, with nilearn's first-level GLM and its default AR(1) noise model
(``nilearn.glm.first_level.run_glm``). ``task.response.<Network>`` is the largest t-statistic
over conditions. The AR(1) model matters: fMRI noise is serially correlated, and ordinary least
squares would report t values about twice as large as warranted on these data.

Condition names and task names are labels that later stages are evaluated on; no descriptor
carries them (only their count).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm
from nilearn.glm.first_level.hemodynamic_models import compute_regressor

from fmrilm.corpus.descriptors._common import NO_NETWORKS, network_signals, note
from fmrilm.corpus.descriptors.base import Context, Descriptor

FAMILY = "task"
N_STRONGEST = 2
HRF_RESOLUTION_S = 0.1  # time grid of the HRF convolution (nilearn's default: TR / 50)
_GLM = (
    "t of the SPM-HRF-convolved condition regressors, with intercept and linear drift, AR(1) "
    "noise (nilearn compute_regressor, run_glm)"
)


def design_matrix(events: pd.DataFrame, n_frames: int, tr: float) -> np.ndarray:
    """(n_frames, n_conditions + 2): one HRF regressor per condition with events in the scan,
    an intercept and a linear drift. Conditions are ordered by name."""
    frame_times = np.arange(n_frames) * tr
    # nilearn convolves directly on a TR/50 grid: ~5 ms per condition at TR 0.72 s. A ~0.1 s grid
    # is 4x cheaper and moves the regressor by < 2.5 % of its peak (t changes by < 1 %)
    oversampling = max(1, math.ceil(tr / HRF_RESOLUTION_S))
    onset = pd.to_numeric(events["onset"], errors="coerce").to_numpy(dtype=float)
    duration = pd.to_numeric(events["duration"], errors="coerce").to_numpy(dtype=float)
    kind = events["trial_type"].fillna("n/a").astype(str).to_numpy()
    valid = np.isfinite(onset) & np.isfinite(duration)
    columns = []
    for cond in np.unique(kind[valid]):  # sorted
        rows = valid & (kind == cond)
        exp = np.vstack([onset[rows], duration[rows], np.ones(rows.sum())])
        reg, _ = compute_regressor(exp, "spm", frame_times, oversampling=oversampling)
        if np.abs(reg).max() > 1e-8:  # events outside the scan give an empty regressor
            columns.append(reg[:, 0])
    drift = np.linspace(-1.0, 1.0, n_frames)
    return np.column_stack([*columns, np.ones(n_frames), drift])


def condition_t(X: np.ndarray, Y: np.ndarray, n_conditions: int) -> np.ndarray:
    """AR(1) GLM t-statistics of the first ``n_conditions`` columns of X, (n_conditions, n_y)."""
    labels, results = run_glm(Y, X, noise_model="ar1", n_jobs=1)
    identity = np.eye(X.shape[1])
    return np.vstack(
        [
            compute_contrast(labels, results, identity[c], stat_type="t").stat()
            for c in range(n_conditions)
        ]
    )


def compute(ctx: Context) -> list[Descriptor]:
    """Largest condition t per network and the two most responsive networks; [] without events."""
    events = ctx.events
    if events is None or len(events) == 0:
        return []
    X = design_matrix(events, ctx.n_frames, ctx.tr)
    n_cond = X.shape[1] - 2
    out = [
        Descriptor(
            "task.n_conditions",
            int(n_cond),
            "",
            FAMILY,
            "distinct event types (trial_type) with events inside the scan",
        )
    ]
    if n_cond == 0:
        return [*out, note(FAMILY, "no task events fall inside the scan; responses omitted")]
    names, signals = network_signals(np.asarray(ctx.series, dtype=np.float64), ctx)
    if not names:
        return [*out, note(FAMILY, NO_NETWORKS)]
    t_max = condition_t(X, signals, n_cond).max(axis=0)  # (n_networks,)
    for net, t in zip(names, t_max, strict=True):
        out.append(
            Descriptor(
                f"task.response.{net}",
                float(t),
                "t",
                FAMILY,
                f"largest over conditions of the {_GLM}, on the network-mean signal",
            )
        )
    order = np.argsort(-t_max, kind="stable")[:N_STRONGEST]
    out.append(
        Descriptor(
            "task.strongest_networks",
            [names[i] for i in order],
            "",
            FAMILY,
            f"networks with the largest task.response (top {N_STRONGEST}); {_GLM}",
        )
    )
    return out
