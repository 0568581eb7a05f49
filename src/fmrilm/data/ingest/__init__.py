"""Ingest: turn a source (builtin data, BIDS/fMRIPrep, NIfTI, CIFTI, ROI files) into a cohort.

Every source module exposes ``discover(spec, options) -> list[RawRun]``; discovery is cheap
(paths and metadata only). The driver :func:`import_source` then loads, validates and
preprocesses each run -- in parallel with ``jobs`` -- and appends it to the cohort store in the
main process. ``shard=(i, n)`` keeps every n-th run starting at i, so a scheduler can split the
work over machines (each writes its own cohort folder).
"""

from fmrilm.data.ingest.base import ImportOptions, Loaded, RawRun
from fmrilm.data.ingest.driver import discover, import_source

__all__ = ["ImportOptions", "Loaded", "RawRun", "discover", "import_source"]
