"""Descriptor records -> natural-language descriptions, and back.

Every sentence states facts from one record: a number exactly as stored (rounded for display)
and, where the descriptor has cohort norms, a qualitative word chosen from its z-score by the
thresholds below. Templates are format strings; the same strings compile to regular expressions,
so :func:`verify` can parse any rendered text back and check every claim against the record.
That check runs in tests on random records, and serves later stages to score generated
descriptions.

Qualitative scale (z against the training-split norms, as displayed: rounded to one decimal)::

    z >= 2          markedly increased      z <= -2          markedly reduced
    1 <= z < 2      increased               -2 < z <= -1     reduced
    0.5 <= z < 1    slightly increased      -1 < z <= -0.5   slightly reduced
    |z| < 0.5       typical
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

QUALIFIERS = (
    "markedly increased",
    "increased",
    "slightly increased",
    "typical",
    "slightly reduced",
    "reduced",
    "markedly reduced",
)
THRESHOLDS = (2.0, 1.0, 0.5)


def qualify(z: float) -> str:
    """Qualitative word for a z-score (see the module docstring for the thresholds)."""
    a = abs(z)
    if a < THRESHOLDS[2]:
        return "typical"
    strength = "markedly " if a >= THRESHOLDS[0] else "" if a >= THRESHOLDS[1] else "slightly "
    return strength + ("increased" if z > 0 else "reduced")


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def fmt_z(z: float) -> str:
    return f"{z:+.1f}"


# ------------------------------------------------------------------------------------------
# facts: which descriptors a sentence states, and how each field is formatted


@dataclass(frozen=True)
class Template:
    kind: str
    text: str

    def regex(self) -> re.Pattern:
        pattern = re.escape(self.text)
        for field, group in _FIELD_PATTERNS.items():
            pattern = pattern.replace(re.escape("{" + field + "}"), f"(?P<{field}>{group})")
        return re.compile(pattern)


_NUM = r"-?\d+(?:\.\d+)?"
_QUAL = "|".join(sorted(QUALIFIERS, key=len, reverse=True))
_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_FIELD_PATTERNS = {
    "net": _NAME,
    "a": _NAME,
    "b": _NAME,
    "low": _NAME,
    "high": _NAME,
    "qual": _QUAL,
    "value": _NUM,
    "z": r"[+-]\d+\.\d",
    "n": r"\d+",
    "pct": r"\d+",
    "hubs": r"[A-Za-z0-9_]+(?:, [A-Za-z0-9_]+)*",
    "state": r"\d+",
    "dwell": _NUM,
    "rate": _NUM,
    "t1": _NUM,
    "t2": _NUM,
    # "Default reduced, Visual typical" / "Default-Visual increased, ..."
    "profile": rf"{_NAME} (?:{_QUAL})(?:, {_NAME} (?:{_QUAL}))*",
    "pairs": rf"{_NAME}-{_NAME} (?:{_QUAL})(?:, {_NAME}-{_NAME} (?:{_QUAL}))*",
}
PROFILE_KINDS = {"within_profile": "fc.within.", "between_profile": "fc.between."}

TEMPLATES: dict[str, tuple[Template, ...]] = {
    kind: tuple(Template(kind, t) for t in texts)
    for kind, texts in {
        "fc_mean": (
            "Overall functional connectivity is {qual} (mean Fisher z {value}, z = {z}).",
            "Across all region pairs, connectivity is {qual} (mean Fisher z {value}, z = {z}).",
        ),
        "within_profile": (
            "Within-network coupling by network: {profile}.",
            "Internal coupling per network: {profile}.",
        ),
        "between_profile": (
            "Between-network coupling by pair: {pairs}.",
            "Coupling between networks, pair by pair: {pairs}.",
        ),
        "fc_within": (
            "Within-network connectivity of the {net} network is {qual} ({value}, z = {z}).",
            "The {net} network is {qual} in internal coupling ({value}, z = {z}).",
            "Coupling inside the {net} network is {qual} ({value}, z = {z}).",
        ),
        "fc_between": (
            "Connectivity between the {a} and {b} networks is {qual} ({value}, z = {z}).",
            "Coupling of the {a} network with the {b} network is {qual} ({value}, z = {z}).",
        ),
        "efficiency": (
            "Global efficiency of the connectivity graph is {qual} ({value}, z = {z}).",
            "The connectivity graph has {qual} global efficiency ({value}, z = {z}).",
        ),
        "modularity": (
            "Modularity is {qual} ({value}, z = {z}) with {n} modules.",
            "The graph splits into {n} modules with {qual} modularity ({value}, z = {z}).",
        ),
        "hubs": (
            "The strongest hubs are {hubs}.",
            "Hub regions with the highest connectivity strength: {hubs}.",
        ),
        "gradient": (
            "The principal connectivity gradient runs from the {low} network to the {high} network (range {value}).",
            "Along the principal gradient (range {value}), the {low} network anchors one end and the {high} network the other.",
        ),
        "falff": (
            "Low-frequency fluctuation amplitude (fALFF) in the {net} network is {qual} ({value}, z = {z}).",
            "The {net} network shows {qual} fALFF ({value}, z = {z}).",
        ),
        "timescale": (
            "The intrinsic timescale of the signals is {qual} ({value} s, z = {z}).",
            "Signals decorrelate over a timescale that is {qual} ({value} s, z = {z}).",
        ),
        "global_signal": (
            "Global signal amplitude is {qual} ({value}, z = {z}).",
            "The global signal fluctuates with {qual} amplitude ({value}, z = {z}).",
        ),
        "dyn_var": (
            "Connectivity variability across sliding windows is {qual} ({value}, z = {z}).",
            "Dynamic connectivity fluctuates with {qual} variability ({value}, z = {z}).",
        ),
        "dyn_state": (
            "Connectivity state {state} dominates ({pct}% of windows), with mean dwell {dwell} s and {rate} transitions per minute.",
            "The scan spends {pct}% of windows in connectivity state {state}; states last {dwell} s on average, switching {rate} times per minute.",
        ),
        "response": (
            "Event-locked responses are strongest in the {a} (t = {t1}) and {b} (t = {t2}) networks.",
            "The largest evoked responses appear in the {a} network (t = {t1}), followed by the {b} network (t = {t2}).",
        ),
        "motion": (
            "Head motion is {qual} (mean framewise displacement {value} mm, z = {z}).",
            "Mean framewise displacement is {value} mm, {qual} for this cohort (z = {z}).",
        ),
        "tsnr": (
            "Temporal signal-to-noise ratio is {qual} ({value}, z = {z}).",
            "The raw signal has {qual} temporal SNR ({value}, z = {z}).",
        ),
    }.items()
}
_REGEXES = [(t, t.regex()) for ts in TEMPLATES.values() for t in ts]


# ------------------------------------------------------------------------------------------
# record -> facts


def _scalar_fact(record: dict[str, Any], name: str, digits: int = 2, **extra: str) -> dict | None:
    d = record.get(name)
    if d is None or d.get("z") is None or not isinstance(d["value"], (int, float)):
        return None
    z = fmt_z(d["z"])
    # the word follows the z a reader sees (z = -0.96 shows as -1.0 and reads "reduced")
    return {
        "value": fmt(d["value"], digits),
        "z": z,
        "qual": qualify(float(z)),
        **extra,
        "_name": name,
    }


def facts(
    record: dict[str, Any], rng: np.random.Generator, n_networks: int = 3
) -> list[tuple[str, dict]]:
    """(kind, fields) for every sentence a description of ``record`` may state."""
    found = [
        *_connectivity_facts(record, rng, n_networks),
        *_graph_facts(record),
        *_signal_facts(record),
        *_dynamics_facts(record),
        *_task_facts(record),
        ("motion", _scalar_fact(record, "quality.fd_mean")),
        ("tsnr", _scalar_fact(record, "quality.tsnr", 0)),
    ]
    return [(kind, fields) for kind, fields in found if fields is not None]


Fact = tuple[str, dict | None]


def _connectivity_facts(record: dict[str, Any], rng: np.random.Generator, n_networks: int):
    out: list[Fact] = [("fc_mean", _scalar_fact(record, "fc.mean"))]
    # compact profiles keep each network next to its word (what a bag-of-words model can use)
    profile = [
        f"{n.split('.')[-1]} {_qual_of(record, n)}" for n in sorted(_ranked(record, "fc.within."))
    ]
    if profile:
        out.append(("within_profile", {"profile": ", ".join(profile), "_name": "fc.within.*"}))
    between = sorted(_ranked(record, "fc.between."))
    if between:
        pairs = [f"{n.split('.')[-1].replace('__', '-')} {_qual_of(record, n)}" for n in between]
        out.append(("between_profile", {"pairs": ", ".join(pairs), "_name": "fc.between.*"}))
    within = _ranked(record, "fc.within.")
    # the most deviant networks always; sometimes one more at random for variety
    chosen = within[:n_networks]
    rest = within[n_networks:]
    if rest and rng.random() < 0.5:
        chosen = chosen + [rest[rng.integers(len(rest))]]
    for name in chosen:
        out.append(("fc_within", _scalar_fact(record, name, net=name.split(".")[-1])))
    for name in _ranked(record, "fc.between.")[:2]:
        a, b = name.split(".")[-1].split("__")
        out.append(("fc_between", _scalar_fact(record, name, a=a, b=b)))
    return out


def _graph_facts(record: dict[str, Any]) -> list[Fact]:
    out: list[Fact] = [("efficiency", _scalar_fact(record, "graph.global_efficiency", 3))]
    mod = _scalar_fact(record, "graph.modularity")
    if mod is not None and "graph.n_modules" in record:
        mod["n"] = str(int(record["graph.n_modules"]["value"]))
        mod["_also"] = ["graph.n_modules"]
        out.append(("modularity", mod))
    if "graph.hubs" in record:
        hubs = {"hubs": ", ".join(record["graph.hubs"]["value"]), "_name": "graph.hubs"}
        out.append(("hubs", hubs))
    keys = ("gradients.anchor_low", "gradients.anchor_high", "gradients.principal_range")
    if all(k in record for k in keys):
        gradient = {
            "low": record["gradients.anchor_low"]["value"],
            "high": record["gradients.anchor_high"]["value"],
            "value": fmt(record["gradients.principal_range"]["value"]),
            "_name": "gradients.principal_range",
        }
        out.append(("gradient", gradient))
    return out


def _signal_facts(record: dict[str, Any]) -> list[Fact]:
    out: list[Fact] = []
    falff = _ranked(record, "spectral.falff.")
    if falff:
        out.append(("falff", _scalar_fact(record, falff[0], 3, net=falff[0].split(".")[-1])))
    out.append(("timescale", _scalar_fact(record, "spectral.timescale_s", 1)))
    out.append(("global_signal", _scalar_fact(record, "spectral.global_signal_sd")))
    return out


def _dynamics_facts(record: dict[str, Any]) -> list[Fact]:
    out: list[Fact] = [("dyn_var", _scalar_fact(record, "dynamics.fc_variability", 3))]
    keys = ("dynamics.occupancy", "dynamics.dominant_state", "dynamics.mean_dwell_s")
    if all(k in record for k in keys):
        state = int(record["dynamics.dominant_state"]["value"])
        occ = record["dynamics.occupancy"]["value"][state - 1]
        fields = {
            "state": str(state),
            "pct": str(int(round(100 * occ))),
            "dwell": fmt(record["dynamics.mean_dwell_s"]["value"], 0),
            "rate": fmt(record.get("dynamics.transitions_per_min", {"value": 0.0})["value"], 1),
            "_name": "dynamics.dominant_state",
        }
        out.append(("dyn_state", fields))
    return out


def _task_facts(record: dict[str, Any]) -> list[Fact]:
    strongest = record.get("task.strongest_networks", {}).get("value")
    if not strongest or len(strongest) < 2:
        return []
    t1 = record[f"task.response.{strongest[0]}"]["value"]
    t2 = record[f"task.response.{strongest[1]}"]["value"]
    fields = {
        "a": strongest[0],
        "b": strongest[1],
        "t1": fmt(t1, 1),
        "t2": fmt(t2, 1),
        "_name": "task.strongest_networks",
    }
    return [("response", fields)]


def _qual_of(record: dict[str, Any], name: str) -> str:
    return qualify(float(fmt_z(record[name]["z"])))


def _ranked(record: dict[str, Any], prefix: str) -> list[str]:
    """Descriptor names with ``prefix`` that have a z-score, most deviant first (stable)."""
    named = [
        (n, d["z"]) for n, d in record.items() if n.startswith(prefix) and d.get("z") is not None
    ]
    return [n for n, _ in sorted(named, key=lambda x: (-abs(x[1]), x[0]))]


def describe(record: dict[str, Any], scan_id: str, variant: int, seed: int = 0) -> str:
    """One natural-language description; deterministic for (record, scan_id, variant, seed)."""
    rng = np.random.default_rng(_seed(seed, scan_id, variant))
    sentences = []
    for kind, fields in facts(record, rng):
        options = TEMPLATES[kind]
        template = options[rng.integers(len(options))]
        sentences.append(
            template.text.format(**{k: v for k, v in fields.items() if not k.startswith("_")})
        )
    # keep the global statement first, shuffle the rest for variety
    head, tail = sentences[:1], sentences[1:]
    rng.shuffle(tail)
    return " ".join(head + tail)


def _seed(seed: int, scan_id: str, variant: int) -> int:
    digest = hashlib.sha256(f"{seed}:{scan_id}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------
# text -> claims -> check against the record


def extract_claims(text: str) -> list[tuple[str, dict[str, str]]]:
    """Every template instance found in ``text`` as (kind, fields)."""
    found = []
    for template, rx in _REGEXES:
        for m in rx.finditer(text):
            found.append((template.kind, m.groupdict()))
    return found


def verify(text: str, record: dict[str, Any]) -> tuple[int, list[str]]:
    """Check every parsed claim against ``record``; returns (claims checked, problems)."""
    reference = {kind: [] for kind in TEMPLATES}
    for kind, fields in facts(record, _AllNetworks()):
        reference[kind].append({k: v for k, v in fields.items() if not k.startswith("_")})
    checked, problems = 0, []
    for kind, fields in extract_claims(text):
        checked += 1
        if kind in PROFILE_KINDS:
            problems += _check_profile(kind, next(iter(fields.values())), record)
        elif not any(_matches(fields, ref) for ref in reference[kind] + _extra_refs(kind, record)):
            problems.append(f"{kind}: {fields} does not match the record")
    return checked, problems


def _check_profile(kind: str, listing: str, record: dict[str, Any]) -> list[str]:
    """Each 'Name word' item of a profile sentence must match that descriptor's z."""
    problems = []
    for item in listing.split(", "):
        key, word = item.split(" ", 1)
        name = PROFILE_KINDS[kind] + key.replace("-", "__")
        d = record.get(name)
        if d is None or d.get("z") is None or _qual_of(record, name) != word:
            problems.append(f"{kind}: '{item}' does not match the record")
    return problems


def _matches(claim: dict[str, str], ref: dict[str, str]) -> bool:
    return all(ref.get(k) == v for k, v in claim.items())


def _extra_refs(kind: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """Facts about any network (not only the ones a description picked)."""
    prefix = {
        "fc_within": "fc.within.",
        "falff": "spectral.falff.",
        "fc_between": "fc.between.",
    }.get(kind)
    if prefix is None:
        return []
    refs = []
    for name in _ranked(record, prefix):
        key = name.split(".")[-1]
        extra = (
            {"net": key}
            if kind != "fc_between"
            else dict(zip(("a", "b"), key.split("__"), strict=True))
        )
        fact = _scalar_fact(record, name, 3 if kind == "falff" else 2, **extra)
        refs.append({k: v for k, v in fact.items() if not k.startswith("_")})
    return refs


class _AllNetworks:
    """A stand-in rng for :func:`facts` that never adds the random extra network."""

    def random(self) -> float:
        return 1.0

    def integers(self, n: int) -> int:
        return 0


# ------------------------------------------------------------------------------------------
# label leakage

FORBIDDEN_WORDS = (
    "male",
    "female",
    "man",
    "woman",
    "men",
    "women",
    "sex",
    "gender",
    "age",
    "aged",
    "old",
    "young",
    "years",
    "diagnosis",
    "patient",
    "control",
    "disorder",
    "task",
    "rest",
    "resting",
)


def leaked_labels(text: str, labels: list[str]) -> list[str]:
    """Label values and label-revealing words that occur in ``text`` as whole words."""
    words = set(re.findall(r"[a-z0-9_]+", text.lower()))
    hits = [w for w in FORBIDDEN_WORDS if w in words]
    for label in labels:
        tokens = re.findall(r"[a-z0-9_]+", str(label).lower())
        if (
            tokens
            and all(t in words for t in tokens)
            and " ".join(tokens) in " ".join(re.findall(r"[a-z0-9_]+", text.lower()))
        ):
            hits.append(str(label))
    return hits
