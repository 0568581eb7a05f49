"""Corpus facts a ``facts`` question may name, and fast per-scan access to a corpus.

A fact is one scalar descriptor of a scan with a z-score against the training norms (e.g.
``fc.within.Default``), named by a noun phrase (:func:`describe_descriptor`) and answered as
``increased`` / ``typical`` / ``reduced`` (:func:`fact_class`), in the words the corpus's
descriptions use for the same z.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import pandas as pd

from fmrilm.corpus.build import Corpus
from fmrilm.corpus.text import THRESHOLDS, fmt_z
from fmrilm.errors import FmrilmError

FACT_CLASSES = ("increased", "typical", "reduced")
# a fact is "typical" below this |z| (as displayed, one decimal): the descriptions' words
# "slightly increased/reduced" and "typical" all count as typical, "increased" and "markedly
# increased" as increased (fmrilm.corpus.text.qualify)
FACT_Z = THRESHOLDS[1]

_FACT_PHRASES = {
    "fc.mean": "overall functional connectivity",
    "graph.global_efficiency": "global efficiency of the connectivity graph",
    "graph.modularity": "modularity of the connectivity graph",
    "graph.clustering": "clustering of the connectivity graph",
    "graph.mean_strength": "mean connectivity strength of the regions",
    "gradients.explained": "the variance explained by the principal connectivity gradient",
    "spectral.falff_mean": "low-frequency fluctuation amplitude (fALFF) across the brain",
    "spectral.timescale_s": "the intrinsic timescale of the signals",
    "spectral.global_signal_sd": "global signal amplitude",
    "spectral.peak_frequency": "the peak frequency of the signals",
    "dynamics.fc_variability": "connectivity variability across sliding windows",
    "quality.fd_mean": "head motion",
    "quality.tsnr": "temporal signal-to-noise ratio",
}
_FACT_PREFIXES = {
    "fc.within.": "within-network connectivity of the {0} network",
    "fc.between.": "connectivity between the {0} and {1} networks",
    "spectral.falff.": "low-frequency fluctuation amplitude (fALFF) in the {0} network",
    "spectral.alff.": "low-frequency amplitude (ALFF) in the {0} network",
}


def describe_descriptor(name: str) -> str:
    """Noun phrase for a descriptor name ('fc.within.Default' -> 'within-network ... Default ...')."""
    if name in _FACT_PHRASES:
        return _FACT_PHRASES[name]
    for prefix, phrase in _FACT_PREFIXES.items():
        if name.startswith(prefix):
            return phrase.format(*name[len(prefix) :].split("__"))
    raise KeyError(name)


def askable_facts(record: dict[str, Any]) -> dict[str, float]:
    """Descriptor name -> z of the descriptors a ``facts`` question may name.

    Askable: a scalar value, a z-score against the training norms, and a phrase to name it.
    """
    out = {}
    for name, d in record.items():
        value, z = d.get("value"), d.get("z")
        if z is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name in _FACT_PHRASES or any(name.startswith(p) for p in _FACT_PREFIXES):
            out[sys.intern(name)] = float(z)
    return out


def fact_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Descriptor names grouped (each network family is one group), names sorted."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        prefix = next((p for p in _FACT_PREFIXES if name.startswith(p)), name)
        groups.setdefault(prefix, []).append(name)
    return groups


def fact_class(z: float) -> str:
    """'increased' / 'typical' / 'reduced' from a z-score as the descriptions display it."""
    shown = float(fmt_z(z))  # z = 0.96 shows as +1.0 and reads "increased" in the texts
    if abs(shown) < FACT_Z:
        return "typical"
    return "increased" if shown > 0 else "reduced"


class CorpusView:
    """Fast per-scan access to a corpus: an index by scan id, and the askable facts of each scan
    kept (compactly) on first use.

    Wraps :class:`fmrilm.corpus.build.Corpus` (or anything with ``record(scan_id)`` and
    ``texts(scan_id)``). A scan missing from the corpus, or skipped by it, has no texts and no
    facts: it is unlabelled for the corpus tasks.
    """

    def __init__(self, corpus: Any):
        self.corpus = corpus
        self._facts: dict[str, dict[str, float]] = {}
        table = getattr(corpus, "table", None)
        self._rows = (
            {sid: i for i, sid in enumerate(table["scan_id"])}
            if isinstance(table, pd.DataFrame) and "scan_id" in table
            else None
        )

    def record(self, scan_id: str) -> dict[str, Any]:
        """The full descriptor record ({} when the scan is missing or was skipped)."""
        if self._rows is not None:
            i = self._rows.get(scan_id)
            return {} if i is None else json.loads(self.corpus.table["record"].iat[i] or "{}")
        try:
            return dict(self.corpus.record(scan_id))
        except FmrilmError:
            return {}

    def facts(self, scan_id: str) -> dict[str, float]:
        """Descriptor name -> z of the scan's askable descriptors (:func:`askable_facts`)."""
        if scan_id not in self._facts:
            self._facts[scan_id] = askable_facts(self.record(scan_id))
        return self._facts[scan_id]

    def texts(self, scan_id: str) -> list[str]:
        if self._rows is not None:
            i = self._rows.get(scan_id)
            return [] if i is None else list(self.corpus.table["texts"].iat[i])
        try:
            return list(self.corpus.texts(scan_id))
        except FmrilmError:
            return []


def as_corpus_view(corpus: Any) -> CorpusView | None:
    """A :class:`CorpusView` of a corpus, a corpus folder, or None."""
    if corpus is None or isinstance(corpus, CorpusView):
        return corpus
    if isinstance(corpus, str) or hasattr(corpus, "__fspath__"):
        corpus = Corpus(corpus)
    return CorpusView(corpus)


__all__ = [
    "FACT_CLASSES",
    "FACT_Z",
    "CorpusView",
    "as_corpus_view",
    "askable_facts",
    "describe_descriptor",
    "fact_class",
    "fact_groups",
]
